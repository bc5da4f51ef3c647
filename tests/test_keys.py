"""Seen keys in bounded memory (`conveyor._journal._keys.SeenKeys`)."""

from __future__ import annotations

import os
import tracemalloc
from typing import TYPE_CHECKING

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor._journal._keys import SeenKeys

if TYPE_CHECKING:
    from pathlib import Path


@settings(max_examples=60)
@given(st.lists(st.sampled_from([f"id{i}" for i in range(40)]), max_size=200))
def test_every_repeat_is_found_with_its_first_line(keys: list[str]) -> None:
    """Against a plain dict: the same first line for every repeat and None for every
    new key, with a 64-bit filter (nearly every lookup a false positive) and spills
    every 7 keys, so answers come from the filter, the memory part and the file."""
    expected: dict[str, int] = {}
    with SeenKeys(bits=64, spill_at=7) as seen:
        for line, key in enumerate(keys, 1):
            want = expected.get(key)
            expected.setdefault(key, line)
            assert seen.first(key, line) == want


def test_memory_part_is_bounded_and_the_scratch_file_leaves_no_trace(tmp_path: Path) -> None:
    """With 50,000 distinct keys at most `spill_at` stay in memory, the rest are in the
    scratch file, which is unlinked while in use; repeats far apart are all found."""
    with SeenKeys(spill_at=1000, directory=tmp_path) as seen:
        for i in range(50_000):
            assert seen.first(f"k{i}", i) is None
            assert len(seen._recent) < 1000
        assert os.listdir(tmp_path) == []
        assert seen.spilled >= 49_000
        assert [seen.first(f"k{i}", 99_999) for i in (0, 1, 25_000, 49_999)] == [
            0,
            1,
            25_000,
            49_999,
        ]


def test_traced_memory_does_not_grow_with_the_keys() -> None:
    """30,000 keys through a 32 KB filter and a 500-key memory part: the traced peak
    stays under 400 KB, where a dict of every key needs about 3 MB."""
    tracemalloc.start()
    try:
        with SeenKeys(bits=1 << 18, spill_at=500) as seen:
            for i in range(30_000):
                seen.first(f"key-{i:08d}", i)
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 400_000, f"peak traced memory {peak} bytes"
