"""LinkProfile: what one direction of one link does to packets (delay, loss, rate, ...).

Users write units ("100ms", "10mbit", "0.5%"); the model stores canonical numbers
(``delay_ms`` float, ``rate_bit`` int, percentages in percent) so every engine reads the
same thing. Both spellings are accepted on input: ``delay: 100ms`` or ``delay_ms: 100``.

The queue ``limit`` (packets) defaults to None, meaning "sized from the bandwidth-delay
product" by `effective_limit()`: never netem's silent 1000 packets, which at 100 Mbit/s
and 200 ms would drop a TCP flow's window on the floor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from testbed.errors import InputError
from testbed.model import units

Distribution = Literal["uniform", "normal", "pareto", "paretonormal"]

MTU_BYTES = 1500
# packets: two 64 kB GSO bursts cut into wire packets (2 x 44) plus room; with 64, one
# TCP flow through 1 Mbit/s lost a burst at every window and fell to 85 % of the rate
LIMIT_FLOOR = 128
LIMIT_HEADROOM = 1.5  # x the bandwidth-delay product, so jitter and bursts do not tail-drop
NOMINAL_RATE_BIT = 10 * 10**9  # a link without a rate is sized as if it ran at 10 Gbit/s
MIN_RATE_BIT = 8_000  # below 1 kB/s a single full-size packet takes longer than a second
MAX_RATE_BIT = 40 * 10**9  # above any lab link; the engines' "unshaped" class runs faster
MAX_DELAY_MS = 60_000.0


def _field(name: str, *aliases: str, **kw: Any) -> Any:
    return Field(validation_alias=AliasChoices(name, *aliases), **kw)


class LinkProfile(BaseModel):
    """One direction of a link. Zero/None everywhere means "unshaped" (`is_empty()`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    delay_ms: float = _field("delay_ms", "delay", default=0.0)
    jitter_ms: float = _field("jitter_ms", "jitter", default=0.0)
    jitter_distribution: Distribution = _field(
        "jitter_distribution", "distribution", default="uniform"
    )
    loss_pct: float = _field("loss_pct", "loss", default=0.0)
    duplicate_pct: float = _field("duplicate_pct", "duplicate", default=0.0)
    corrupt_pct: float = _field("corrupt_pct", "corrupt", default=0.0)
    reorder_pct: float = _field("reorder_pct", "reorder", default=0.0)
    rate_bit: int | None = _field("rate_bit", "rate", default=None)
    limit: int | None = _field("limit", "limit_packets", default=None)

    # -- input: units in one place (testbed.model.units) ------------------------------
    @field_validator("delay_ms", "jitter_ms", mode="before")
    @classmethod
    def _duration(cls, v: Any, info: Any) -> float:
        return units.parse_duration_ms(v, field=info.field_name)

    @field_validator("loss_pct", "duplicate_pct", "corrupt_pct", "reorder_pct", mode="before")
    @classmethod
    def _percent(cls, v: Any, info: Any) -> float:
        pct = units.parse_percent(v, field=info.field_name)
        if pct > 100:
            raise InputError(f"{pct}% is more than 100%", field=info.field_name)
        return pct

    @field_validator("rate_bit", mode="before")
    @classmethod
    def _rate(cls, v: Any, info: Any) -> int | None:
        if v is None:
            return None
        bit = units.parse_rate_bit(v, field=info.field_name)
        if not MIN_RATE_BIT <= bit <= MAX_RATE_BIT:
            raise InputError(
                f"rate {units.format_rate(bit)} is outside "
                f"{units.format_rate(MIN_RATE_BIT)}..{units.format_rate(MAX_RATE_BIT)}",
                field=info.field_name,
                hint="leave rate out for an unlimited link",
            )
        return bit

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, v: Any, info: Any) -> int | None:
        if v is None:
            return None
        n = units.parse_packets(v, field=info.field_name)
        if not 1 <= n < 2**32:
            raise InputError(f"queue limit {n} must be 1 or more packets", field=info.field_name)
        return n

    @model_validator(mode="after")
    def _coherent(self) -> LinkProfile:
        if self.delay_ms > MAX_DELAY_MS:
            raise InputError(
                f"delay {units.format_duration(self.delay_ms)} is more than "
                f"{units.format_duration(MAX_DELAY_MS)}",
                field="delay_ms",
            )
        if self.jitter_ms > 0 and self.delay_ms == 0:
            raise InputError(
                "jitter needs a delay to vary around",
                field="jitter_ms",
                hint="set delay as well, e.g. delay: 100ms, jitter: 10ms",
            )
        if self.jitter_ms > self.delay_ms:
            raise InputError(
                f"jitter {units.format_duration(self.jitter_ms)} is larger than the delay "
                f"{units.format_duration(self.delay_ms)}; packets cannot leave before they "
                "arrive, so the distribution would be cut at zero",
                field="jitter_ms",
            )
        if self.jitter_distribution != "uniform" and self.jitter_ms == 0:
            raise InputError(
                f"jitter_distribution {self.jitter_distribution!r} needs jitter > 0",
                field="jitter_distribution",
            )
        if self.reorder_pct > 0 and self.delay_ms == 0:
            raise InputError(
                "reorder sends some packets without the delay, so it needs a delay",
                field="reorder_pct",
            )
        return self

    # -- constructors that turn pydantic's errors into InputError ----------------------
    @classmethod
    def parse(
        cls, data: Mapping[str, Any] | None, *, file: str | None = None, line: int | None = None
    ) -> LinkProfile:
        """Build from YAML/CLI data; any problem is an `InputError` naming file, line, field."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InputError(
                f"a link profile must be a mapping, found {data!r}", file=file, line=line
            )
        try:
            return cls.model_validate(dict(data))
        except InputError as e:
            raise InputError(e.message, file=file, line=line, hint=e.hint) from None
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or None
            cause = err.get("ctx", {}).get("error")
            if isinstance(cause, InputError):
                raise InputError(cause.message, file=file, line=line, hint=cause.hint) from None
            found = err.get("input")
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = f"unknown field (known: {', '.join(sorted(_KNOWN_KEYS))})"
            raise InputError(f"{msg}, found {found!r}", file=file, line=line, field=field) from None

    @classmethod
    def from_spec(cls, spec: str) -> LinkProfile:
        """Parse a CLI spec: "delay=100ms jitter=10ms loss=1% rate=10mbit" (commas work too)."""
        data: dict[str, str] = {}
        for item in spec.replace(",", " ").split():
            key, sep, value = item.partition("=")
            if not sep or not key or not value:
                raise InputError(
                    f"expected key=value in link spec, found {item!r}",
                    hint='e.g. "delay=100ms loss=1% rate=10mbit"',
                )
            data[key.strip()] = value.strip()
        return cls.parse(data)

    # -- derived values ----------------------------------------------------------------
    def is_empty(self) -> bool:
        """True when the profile changes nothing (a limit alone shapes nothing)."""
        return (
            self.delay_ms == 0
            and self.jitter_ms == 0
            and self.loss_pct == 0
            and self.duplicate_pct == 0
            and self.corrupt_pct == 0
            and self.reorder_pct == 0
            and self.rate_bit is None
        )

    def effective_limit(self, mtu: int = MTU_BYTES) -> int:
        """The queue limit in packets: the one asked, or 1.5 x the bandwidth-delay product.

        BDP = rate x (delay + jitter) / MTU, with rate = NOMINAL_RATE_BIT when none is
        set, and at least LIMIT_FLOOR packets.
        """
        if self.limit is not None:
            return self.limit
        rate = self.rate_bit or NOMINAL_RATE_BIT
        seconds = (self.delay_ms + self.jitter_ms) / 1000.0
        bdp = math.ceil(rate / 8 * seconds / mtu)
        return max(math.ceil(bdp * LIMIT_HEADROOM), LIMIT_FLOOR)

    def resolved(self) -> LinkProfile:
        """The same profile with `limit` filled in, as an engine installs and reads it back."""
        return self.model_copy(update={"limit": self.effective_limit()})

    def needs_delay_line(self) -> bool:
        """True when something other than the rate is shaped (netem or the NFQUEUE line)."""
        return not self.model_copy(update={"rate_bit": None}).is_empty()

    def describe(self) -> str:
        """One line for humans, in units: "delay 100ms ±10ms normal, loss 1%, rate 10mbit"."""
        if self.is_empty():
            return "unshaped"
        parts = []
        if self.delay_ms:
            d = f"delay {units.format_duration(self.delay_ms)}"
            if self.jitter_ms:
                d += f" ±{units.format_duration(self.jitter_ms)}"
                if self.jitter_distribution != "uniform":
                    d += f" {self.jitter_distribution}"
            parts.append(d)
        for name in ("loss", "duplicate", "corrupt", "reorder"):
            pct = getattr(self, f"{name}_pct")
            if pct:
                parts.append(f"{name} {units.format_percent(pct)}")
        if self.rate_bit is not None:
            parts.append(f"rate {units.format_rate(self.rate_bit)}")
        limit = self.effective_limit()
        parts.append(f"limit {limit}p" + ("" if self.limit is not None else " (auto)"))
        return ", ".join(parts)

    def to_spec(self) -> str:
        """The inverse of `from_spec`, in units."""
        items = []
        if self.delay_ms:
            items.append(f"delay={units.format_duration(self.delay_ms)}")
        if self.jitter_ms:
            items.append(f"jitter={units.format_duration(self.jitter_ms)}")
        if self.jitter_distribution != "uniform":
            items.append(f"distribution={self.jitter_distribution}")
        for name in ("loss", "duplicate", "corrupt", "reorder"):
            pct = getattr(self, f"{name}_pct")
            if pct:
                items.append(f"{name}={units.format_percent(pct)}")
        if self.rate_bit is not None:
            items.append(f"rate={units.format_rate(self.rate_bit)}")
        if self.limit is not None:
            items.append(f"limit={self.limit}p")
        return " ".join(items)


_KNOWN_KEYS = {
    alias
    for name, f in LinkProfile.model_fields.items()
    for alias in (
        f.validation_alias.choices if isinstance(f.validation_alias, AliasChoices) else [name]
    )
    if isinstance(alias, str)
}

UNSHAPED = LinkProfile()
