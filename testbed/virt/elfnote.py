"""The GNU build id of an ELF file (its NT_GNU_BUILD_ID note), read from the bytes alone.

A report that names which library ran gives the path and this id: the path can be
reused by another build, the id cannot. Pure: takes the file's bytes, no tool needed.
"""

from __future__ import annotations

import struct

__all__ = ["gnu_build_id"]

_PT_NOTE = 4
_NT_GNU_BUILD_ID = 3


def gnu_build_id(data: bytes) -> str | None:
    """The build id as lower-case hex, or None (not a 64/32-bit ELF, or no such note)."""
    if len(data) < 52 or data[:4] != b"\x7fELF":
        return None
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    try:
        if is64:
            (phoff,) = struct.unpack_from(end + "Q", data, 0x20)
            phentsize, phnum = struct.unpack_from(end + "HH", data, 0x36)
        else:
            (phoff,) = struct.unpack_from(end + "I", data, 0x1C)
            phentsize, phnum = struct.unpack_from(end + "HH", data, 0x2A)
        for i in range(phnum):
            at = phoff + i * phentsize
            (p_type,) = struct.unpack_from(end + "I", data, at)
            if p_type != _PT_NOTE:
                continue
            if is64:
                (offset,) = struct.unpack_from(end + "Q", data, at + 8)
                (size,) = struct.unpack_from(end + "Q", data, at + 32)
            else:
                (offset,) = struct.unpack_from(end + "I", data, at + 4)
                (size,) = struct.unpack_from(end + "I", data, at + 16)
            found = _in_notes(data[offset : offset + size], end)
            if found:
                return found
    except struct.error:
        return None
    return None


def _in_notes(notes: bytes, end: str) -> str | None:
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, kind = struct.unpack_from(end + "III", notes, pos)
        name_at = pos + 12
        desc_at = name_at + _align4(namesz)
        if kind == _NT_GNU_BUILD_ID and notes[name_at : name_at + namesz] == b"GNU\x00":
            return notes[desc_at : desc_at + descsz].hex()
        pos = desc_at + _align4(descsz)
    return None


def _align4(n: int) -> int:
    return (n + 3) & ~3
