"""Seed 002: schedule several creators in parallel (fail_fast off, a timeout per
creator), then re-run only the ones that failed.

python examples/seed002_partial_rerun.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import conveyor

FLAKY = {"chloe_wildd"}  # fails on the first pass only


def generate_schedule(creator: str) -> dict[str, str]:
    if creator in FLAKY:
        raise ConnectionError(f"scheduler backend dropped {creator}")
    return {"creator": creator, "week_start": "2025-12-23", "status": "scheduled"}


def main() -> None:
    creators = ["alexia", "chloe_wildd", "shelby_d_vip"]
    journal = Path(tempfile.mkdtemp()) / "batch.db"
    first = conveyor.run(
        creators, generate_schedule, concurrency=3, timeout=300, retries=0, journal=journal
    )
    print("first pass:", first.summary())
    FLAKY.clear()  # the backend is back
    again = conveyor.run(
        creators, generate_schedule, concurrency=3, timeout=300, journal=journal, rerun="failed"
    )
    print("re-run of the failures:", again.summary())
    print("resumed from the journal:", again.extra["resumed"], "of", again.total)


if __name__ == "__main__":
    main()
