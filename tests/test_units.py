"""Units: parsing and formatting, including every way input can be wrong."""

from __future__ import annotations

import pytest

from testbed.errors import InputError
from testbed.model import units


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("100ms", 100.0),
        ("1.5s", 1500.0),
        ("250us", 0.25),
        ("250µs", 0.25),
        ("2sec", 2000.0),
        ("10 msec", 10.0),
        ("100", 100.0),  # bare number: milliseconds
        (100, 100.0),
        (0.5, 0.5),
        ("0", 0.0),
        (" 7ms ", 7.0),
        ("1e3us", 1.0),
    ],
)
def test_durations(text: object, ms: float) -> None:
    assert units.parse_duration_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize(
    ("text", "bit"),
    [
        ("10mbit", 10_000_000),
        ("512kbit", 512_000),
        ("1gbit", 1_000_000_000),
        ("1.5gbit", 1_500_000_000),
        ("100mbps", 800_000_000),  # tc: bps is BYTES per second
        ("1kbps", 8_000),
        ("1mibit", 1_048_576),
        ("1kibps", 8_192),
        ("8000", 8_000),  # bare number: bit/s
        (64000, 64_000),
        ("10MBit", 10_000_000),  # units are case-insensitive, like tc
    ],
)
def test_rates(text: object, bit: int) -> None:
    assert units.parse_rate_bit(text) == bit


@pytest.mark.parametrize(("text", "pct"), [("0.5%", 0.5), (0.5, 0.5), ("5", 5.0), ("100%", 100.0)])
def test_percent_bare_number_is_percent_not_fraction(text: object, pct: float) -> None:
    assert units.parse_percent(text) == pct


@pytest.mark.parametrize(
    ("text", "size"),
    [("1500b", 1500), ("1500", 1500), ("64kb", 65536), ("64k", 65536), ("1mb", 1 << 20),
     ("2gib", 2 << 30)],
)  # fmt: skip
def test_sizes(text: str, size: int) -> None:
    assert units.parse_size_bytes(text) == size


@pytest.mark.parametrize(("text", "n"), [("1000p", 1000), ("1000", 1000), (64, 64), ("5pkt", 5)])
def test_packets(text: object, n: int) -> None:
    assert units.parse_packets(text) == n


@pytest.mark.parametrize(
    ("parser", "value", "words"),
    [
        (units.parse_duration_ms, "10 parsecs", ["unknown unit 'parsecs'", "'100ms'"]),
        (units.parse_duration_ms, "-5ms", ["must not be negative", "'-5ms'"]),
        (units.parse_duration_ms, "fast", ["expected a duration", "'fast'"]),
        (units.parse_duration_ms, "nan", ["expected a duration"]),
        (units.parse_duration_ms, "1e999ms", ["finite"]),
        (units.parse_duration_ms, True, ["expected a duration", "True"]),
        (units.parse_duration_ms, None, ["expected a duration", "None"]),
        (units.parse_duration_ms, [100], ["expected a duration"]),
        (units.parse_rate_bit, "10mbits", ["unknown unit 'mbits'", "mbit"]),
        (units.parse_rate_bit, "1.5bit", ["not a whole number"]),
        (units.parse_rate_bit, "-1mbit", ["must not be negative"]),
        (units.parse_percent, "5ms", ["unknown unit 'ms'", "%"]),
        (units.parse_size_bytes, "1.5b", ["not a whole number"]),
        (units.parse_size_bytes, "3 furlongs", ["unknown unit"]),
        (units.parse_packets, "2.5p", ["not a whole number"]),
        (units.parse_packets, "10ms", ["unknown unit 'ms'"]),
    ],
)
def test_bad_input_names_value_and_expectation(parser, value, words) -> None:
    with pytest.raises(InputError) as e:
        parser(value, field="links.wan.delay")
    msg = str(e.value)
    assert msg.startswith("links.wan.delay: ")
    for w in words:
        assert w in msg


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0ms"), (100, "100ms"), (1500, "1.5s"), (2000, "2s"), (0.25, "250us"), (1.5, "1.5ms"),
     (12345.678, "12.345678s")],
)  # fmt: skip
def test_format_duration(ms: float, text: str) -> None:
    assert units.format_duration(ms) == text
    assert units.parse_duration_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize(
    ("bit", "text"),
    [(10_000_000, "10mbit"), (512_000, "512kbit"), (1_500_000_000, "1.5gbit"), (8, "8bit"),
     (1_234_567, "1234.567kbit"), (40 * 10**9, "40gbit")],
)  # fmt: skip
def test_format_rate(bit: int, text: str) -> None:
    assert units.format_rate(bit) == text
    assert units.parse_rate_bit(text) == bit


@pytest.mark.parametrize("ms", [0.001, 0.1, 1, 7.25, 99.999, 100, 1234.5, 60_000])
def test_duration_round_trip(ms: float) -> None:
    assert units.parse_duration_ms(units.format_duration(ms)) == pytest.approx(ms, abs=1e-9)


@pytest.mark.parametrize("bit", [1, 999, 1000, 1001, 123_456_789, 10**12, 3 * 10**9 + 7])
def test_rate_round_trip(bit: int) -> None:
    assert units.parse_rate_bit(units.format_rate(bit)) == bit


def test_other_formats_round_trip() -> None:
    for pct in (0, 0.5, 1, 5, 12.5, 100, 0.0001):
        assert units.parse_percent(units.format_percent(pct)) == pct
    for size in (1, 1500, 1024, 65536, 1 << 20, 3 << 30, 1025):
        assert units.parse_size_bytes(units.format_size(size)) == size
    assert units.format_size(65536) == "64kb"
    assert units.format_packets(1000) == "1000p"
    assert units.parse_packets(units.format_packets(1000)) == 1000
