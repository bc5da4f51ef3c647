"""The fixed-size Bloom filter (`conveyor._core._bloom`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor._core._bloom import BloomFilter


@given(st.lists(st.text(max_size=40), max_size=300), st.sampled_from([64, 1024, 1 << 16]))
def test_never_a_false_negative(keys: list[str], bits: int) -> None:
    """Every key added is reported present, however full the filter (even 64 bits)."""
    f = BloomFilter(bits=bits, hashes=4)
    for k in keys:
        f.add(k)
    assert all(k in f for k in keys)


@given(st.lists(st.text(max_size=20), unique=True, max_size=200))
def test_add_says_whether_the_key_may_have_been_there(keys: list[str]) -> None:
    """`add` returns True for a key added before; a roomy filter says False for new keys."""
    f = BloomFilter(bits=1 << 20)
    firsts = [f.add(k) for k in keys]
    assert all(f.add(k) for k in keys)  # a second add: always "maybe there"
    assert sum(firsts) <= 1  # 200 keys in a million bits: a collision is very rare


def test_memory_is_fixed_and_false_positives_are_rare_at_design_load() -> None:
    """Size is set at creation; 10,000 keys in 2**20 bits give almost no false positives."""
    f = BloomFilter(bits=1 << 20, hashes=4)
    for i in range(10_000):
        f.add(f"key-{i}")
    assert f.nbytes == (1 << 20) // 8
    false_positives = sum(f"other-{i}" in f for i in range(10_000))
    assert false_positives <= 5  # expected about 0.02


def test_only_strings_are_members() -> None:
    """A non-string is never reported present (no TypeError from a lookup)."""
    f = BloomFilter(bits=64)
    f.add("1")
    assert 1 not in f


@pytest.mark.parametrize(("bits", "hashes"), [(100, 4), (32, 4), (1024, 0), (1024, 17)])
def test_bad_sizes_are_refused(bits: int, hashes: int) -> None:
    """Bits must be a power of two >= 64 and hashes 1..16."""
    with pytest.raises(ValueError, match="must be"):
        BloomFilter(bits=bits, hashes=hashes)
