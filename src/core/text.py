"""Small text rules shared by adapters."""

from __future__ import annotations


def utf8_tail(data: bytes, max_bytes: int) -> str:
    """The last ``max_bytes`` of ``data`` as text: never more bytes, never half a character.

    A cut that falls inside a multi-byte character drops the character's leftover bytes rather
    than inventing a replacement character.
    """
    if max_bytes <= 0:
        return ""
    tail = data[-max_bytes:]
    start = 0
    while start < len(tail) and start < 3 and 0x80 <= tail[start] <= 0xBF:
        start += 1
    return tail[start:].decode("utf-8", errors="replace")
