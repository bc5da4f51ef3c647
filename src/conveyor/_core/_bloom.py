"""A fixed-size Bloom filter over strings: "surely never seen" or "maybe seen".

Memory is fixed when it is made (`bits / 8` bytes), whatever the number of
keys added: past its design size the false-positive rate rises, it never
gives a false negative. Callers that need an exact answer keep the keys
elsewhere (the journal, a spill file) and look there only on "maybe".

Positions come from Python's own `hash()` of the key (cached on each `str`,
so a key is hashed once in its life), by double hashing of its two halves. `hash()` is salted
per process: a filter is an in-memory structure of one process, never stored.
"""

from __future__ import annotations

__all__ = ["BloomFilter"]

_MASK = (1 << 64) - 1


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

    def add(self, key: str) -> bool:
        """Add `key`; True when it was (maybe) there already."""
        # Double hashing (Kirsch-Mitzenmacher): position i is h1 + i * h2, h2 odd,
        # from the low and high halves of the one 64-bit hash. Written out inline:
        # this runs for every item of a run.
        h = hash(key) & _MASK
        step = (h >> 32) | 1
        bits, m = self._bits, self._mask
        present = True
        for _ in range(self._hashes):
            p = h & m
            byte, bit = p >> 3, 1 << (p & 7)
            b = bits[byte]
            if not b & bit:
                present = False
                bits[byte] = b | bit
            h += step
        self.added += 1
        return present

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        h = hash(key) & _MASK
        step = (h >> 32) | 1
        bits, m = self._bits, self._mask
        for _ in range(self._hashes):
            p = h & m
            if not bits[p >> 3] & (1 << (p & 7)):
                return False
            h += step
        return True
