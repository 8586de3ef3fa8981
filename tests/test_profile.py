"""LinkProfile: units in, canonical numbers stored, nonsense rejected with a clear message."""

from __future__ import annotations

import pytest

from testbed.errors import InputError
from testbed.model.profile import LIMIT_FLOOR, LinkProfile


def test_units_in_canonical_numbers_stored() -> None:
    p = LinkProfile.parse(
        {"delay": "100ms", "jitter": "10ms", "distribution": "normal", "loss": "0.5%",
         "duplicate": 1, "corrupt": "0.1%", "reorder": "25%", "rate": "10mbit",
         "limit": "500p"}
    )  # fmt: skip
    assert (p.delay_ms, p.jitter_ms, p.jitter_distribution) == (100.0, 10.0, "normal")
    assert (p.loss_pct, p.duplicate_pct, p.corrupt_pct, p.reorder_pct) == (0.5, 1.0, 0.1, 25.0)
    assert (p.rate_bit, p.limit) == (10_000_000, 500)


def test_canonical_names_and_numbers_accepted() -> None:
    p = LinkProfile.parse({"delay_ms": 100, "rate_bit": 8_000_000, "loss_pct": 1})
    assert p == LinkProfile(delay_ms=100, rate_bit=8_000_000, loss_pct=1)
    assert LinkProfile.model_validate(p.model_dump()) == p  # JSON round trip


def test_spec_round_trip() -> None:
    p = LinkProfile.from_spec("delay=100ms jitter=5ms distribution=pareto loss=1% rate=2.5mbit")
    assert p.rate_bit == 2_500_000 and p.jitter_distribution == "pareto"
    assert LinkProfile.from_spec(p.to_spec()) == p
    assert LinkProfile.from_spec("delay=1s,loss=0.5%") == LinkProfile(delay_ms=1000, loss_pct=0.5)


def test_empty_and_describe() -> None:
    assert LinkProfile().is_empty() and LinkProfile.parse(None).is_empty()
    assert LinkProfile(limit=10).is_empty()  # a limit alone shapes nothing
    assert LinkProfile().describe() == "unshaped"
    p = LinkProfile.parse({"delay": "100ms", "jitter": "10ms", "distribution": "normal",
                           "loss": "1%", "rate": "10mbit"})  # fmt: skip
    assert p.describe() == "delay 100ms ±10ms normal, loss 1%, rate 10mbit, limit 138p (auto)"
    assert not p.is_empty() and p.needs_delay_line()
    assert not LinkProfile(rate_bit=10**7).needs_delay_line()


def test_limit_from_bandwidth_delay_product() -> None:
    # 10 Mbit/s x 110 ms = 137.5 kB = 92 full packets, x 1.5 headroom = 138
    assert LinkProfile(rate_bit=10**7, delay_ms=100, jitter_ms=10).effective_limit() == 138
    # 100 Mbit/s x 200 ms: 2.5 MB = 1667 packets in flight, far beyond netem's 1000
    assert LinkProfile(rate_bit=10**8, delay_ms=200).effective_limit() == 2501
    # no rate: sized as a 10 Gbit/s link, so an unlimited link never tail-drops a window
    assert LinkProfile(delay_ms=100).effective_limit() == 125001
    # nothing to size from: the floor
    assert LinkProfile(rate_bit=10**6).effective_limit() == LIMIT_FLOOR
    assert LinkProfile(rate_bit=10**6, limit=5).effective_limit() == 5
    assert LinkProfile(delay_ms=1).resolved().limit == LinkProfile(delay_ms=1).effective_limit()


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"delay": "-1ms"}, "delay_ms", "must not be negative"),
        ({"delay": "fast"}, "delay_ms", "expected a duration"),
        ({"delay": "2min"}, "delay_ms", "unknown unit 'min'"),
        ({"delay": "61s"}, "delay_ms", "more than 60s"),
        ({"loss": "150%"}, "loss_pct", "more than 100%"),
        ({"duplicate": "-1%"}, "duplicate_pct", "must not be negative"),
        ({"jitter": "5ms"}, "jitter_ms", "jitter needs a delay"),
        ({"delay": "10ms", "jitter": "20ms"}, "jitter_ms", "larger than the delay"),
        ({"delay": "10ms", "distribution": "normal"}, "jitter_distribution", "needs jitter"),
        ({"delay": "10ms", "jitter": "1ms", "distribution": "gauss"}, "distribution", "'normal'"),
        ({"reorder": "5%"}, "reorder_pct", "needs a delay"),
        ({"rate": "0bit"}, "rate_bit", "outside 8kbit..40gbit"),
        ({"rate": "100gbit"}, "rate_bit", "outside"),
        ({"rate": "10 mbits"}, "rate_bit", "unknown unit 'mbits'"),
        ({"limit": 0}, "limit", "1 or more packets"),
        ({"limit": "1.5p"}, "limit", "not a whole number"),
        ({"delya": "10ms"}, "delya", "unknown field"),
    ],
)
def test_nonsense_rejected_with_file_line_field(data: dict, field: str, words: str) -> None:
    with pytest.raises(InputError) as e:
        LinkProfile.parse(data, file="lab.yaml", line=12)
    msg = str(e.value)
    assert msg.startswith("lab.yaml:12: ")
    assert field in msg and words in msg, msg


def test_not_a_mapping() -> None:
    with pytest.raises(InputError, match="must be a mapping"):
        LinkProfile.parse("delay 100ms", file="lab.yaml")  # type: ignore[arg-type]


def test_direct_construction_raises_a_value_error_carrying_the_input_error() -> None:
    # pydantic wraps the InputError (also a ValueError) in a ValidationError; parse() and
    # the playbook loader unwrap it to name the file and line
    with pytest.raises(ValueError, match="jitter needs a delay") as e:
        LinkProfile(jitter_ms=5)
    assert isinstance(e.value.errors()[0]["ctx"]["error"], InputError)  # type: ignore[attr-defined]


def test_bad_spec() -> None:
    with pytest.raises(InputError, match="key=value"):
        LinkProfile.from_spec("delay 100ms")


def test_profiles_are_hashable_values() -> None:
    a, b = LinkProfile(delay_ms=10), LinkProfile.parse({"delay": "10ms"})
    assert a == b and hash(a) == hash(b)
    with pytest.raises(Exception):  # noqa: B017 - frozen
        a.delay_ms = 5  # type: ignore[misc]
