"""Reading the guest's frame number off one row of the client's screen.

The guest's heartbeat (testbed/virt/guest/heartbeat.c, `put_barcode`; keep the
constants here in step with its BAR_* defines) draws, across the middle of its
VGA text screen, SLOTS equal slots: light grey for 1, black for 0. The slots are
a 1 (start), DATA bits of the frame's sequence number (most significant first),
CHECK bits of `seq % MOD`, and a 1 (end); everything left and right of them in
those rows is black. So in one pixel row that crosses the band, the first and
last bright pixels are the outer edges of the start and end slots, whatever the
client's scaling and offset, and the slot centres follow.

Pure functions on pixel bytes; the sampler in `screen.py` feeds them.
"""

from __future__ import annotations

DATA = 18
CHECK = 6
MOD = 61  # a prime < 2**CHECK: a one-bit error in the data changes seq % MOD
SLOTS = 1 + DATA + CHECK + 1
SEQ_MASK = (1 << DATA) - 1
MIN_SLOT_PX = 3.0  # narrower than this the client shows the band too small to read
BRIGHT = 0x80  # a pixel is a 1 when all of R, G and B are above this (VGA light grey: 0xAA)

_BRIGHT_TABLE = bytes(1 if v > BRIGHT else 0 for v in range(256))


def bright_mask(data: bytes, width: int, msb_first: bool = False) -> bytes:
    """One byte per pixel (1 bright, 0 dark) from a 32-bpp ZPixmap row of `width` pixels."""
    b, g, r = (3, 2, 1) if msb_first else (0, 1, 2)
    chans = [data[i::4][:width].translate(_BRIGHT_TABLE) for i in (r, g, b)]
    m = int.from_bytes(chans[0], "little")
    m &= int.from_bytes(chans[1], "little")
    m &= int.from_bytes(chans[2], "little")
    return m.to_bytes(width, "little")


def decode(mask: bytes) -> int | None:
    """The frame number a row shows (its low DATA bits), or None if the row holds no valid code.

    Each slot is read at three points across its middle half, which must agree,
    so a row torn between two frames, or one that misses the band, reads None.
    """
    first, last = mask.find(1), mask.rfind(1)
    if first < 0 or last <= first:
        return None
    slot = (last - first + 1) / SLOTS
    if slot < MIN_SLOT_PX:
        return None
    bits = []
    for i in range(SLOTS):
        left = first + i * slot
        votes = {mask[int(left + slot * f)] for f in (0.3, 0.5, 0.7)}
        if len(votes) != 1:
            return None
        bits.append(votes.pop())
    if bits[0] != 1 or bits[-1] != 1:
        return None
    seq = int("".join(map(str, bits[1 : 1 + DATA])), 2)
    check = int("".join(map(str, bits[1 + DATA : 1 + DATA + CHECK])), 2)
    return seq if seq % MOD == check else None


def encode(seq: int) -> list[int]:
    """The slots the guest draws for `seq` (for tests: the C side's twin)."""
    data = seq & SEQ_MASK
    return [1, *_bits(data, DATA), *_bits(data % MOD, CHECK), 1]


def _bits(value: int, n: int) -> list[int]:
    return [value >> i & 1 for i in range(n - 1, -1, -1)]
