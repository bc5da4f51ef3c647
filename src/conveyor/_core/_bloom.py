"""A fixed-size Bloom filter over strings: "surely never seen" or "maybe seen".

Memory is fixed when it is made (`bits / 8` bytes), whatever the number of
keys added: past its design size the false-positive rate rises, it never
gives a false negative. Callers that need an exact answer keep the keys
elsewhere (the journal, a spill file) and look there only on "maybe".

Positions come from Python's own `hash()` of the key (cached on each `str`,
so a key is hashed once in its life), by double hashing. `hash()` is salted
per process: a filter is an in-memory structure of one process, never stored.
"""

from __future__ import annotations

__all__ = ["BloomFilter"]

_MASK = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: spreads h1 into an odd step h2


class BloomFilter:
    """`add(key)`; `key in f` is False only for keys never added."""

    __slots__ = ("_bits", "_hashes", "_mask", "added")

    def __init__(self, *, bits: int = 1 << 25, hashes: int = 4) -> None:
        if bits < 64 or bits & (bits - 1):
            raise ValueError("bits must be a power of two >= 64")
        if not 1 <= hashes <= 16:
            raise ValueError("hashes must be between 1 and 16")
        self._bits = bytearray(bits >> 3)
        self._mask = bits - 1
        self._hashes = hashes
        self.added = 0

    @property
    def nbytes(self) -> int:
        return len(self._bits)

    def _positions(self, key: str) -> list[int]:
        h1 = hash(key) & _MASK
        h2 = ((h1 * _MIX) & _MASK) >> 7 | 1
        m = self._mask
        return [(h1 + i * h2) & m for i in range(self._hashes)]

    def add(self, key: str) -> bool:
        """Add `key`; True when it was (maybe) there already."""
        bits = self._bits
        present = True
        for p in self._positions(key):
            byte, bit = p >> 3, 1 << (p & 7)
            if not bits[byte] & bit:
                present = False
                bits[byte] |= bit
        self.added += 1
        return present

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        bits = self._bits
        return all(bits[p >> 3] & (1 << (p & 7)) for p in self._positions(key))
