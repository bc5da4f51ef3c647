"""Seed 003: 5 workers, each with its own DB connection, after a preflight that can block.

python examples/seed003_workers_and_preflight.py
(on the command line the same checks: conveyor run --max-gpu-memory 95 --check mod:fn ...)
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import threading
from pathlib import Path

import conveyor
from conveyor.cli._preflight import format_checks, has_failures, preflight

DB = Path(tempfile.mkdtemp()) / "interactions.db"
local = threading.local()


def open_connection() -> None:  # worker_init: once per worker thread
    local.db = sqlite3.connect(DB)


def close_connection() -> None:  # worker_teardown: when the pool closes
    local.db.close()


def db_reachable() -> str | None:  # a check of our own: None passes, a string blocks
    try:
        sqlite3.connect(DB).execute("SELECT 1")
    except sqlite3.Error as exc:
        return f"database unreachable: {exc}"
    return None


def process(job_id: int) -> int:
    local.db.execute("INSERT INTO results VALUES (?, ?)", (job_id, threading.get_ident()))
    local.db.commit()
    return job_id


def main() -> None:
    with sqlite3.connect(DB) as db:
        db.execute("CREATE TABLE results (job_id INTEGER, worker INTEGER)")
    checks = asyncio.run(
        preflight(
            base_url="http://127.0.0.1:9/v1",  # no AI endpoint here: that check just fails/skips
            api_key=None,
            max_gpu_memory=95,  # blocks when a GPU is above 95% (nvidia-smi), not just warns
            checks=[db_reachable],
            min_free_memory_mb=0,
        )
    )
    print(format_checks([c for c in checks if c.name not in ("endpoint", "api key", "model")]))
    if has_failures([c for c in checks if c.name.startswith(("gpu", "check", "memory"))]):
        raise SystemExit("preflight failed: not starting")
    test_size = 10  # staged rollout: 10 first, then the rest
    for stage in (range(test_size), range(test_size, 100)):
        report = conveyor.run(
            stage,
            process,
            concurrency=5,
            worker_init=open_connection,
            worker_teardown=close_connection,
        )
        print(report.summary())
    with sqlite3.connect(DB) as db:
        workers = db.execute("SELECT count(DISTINCT worker) FROM results").fetchone()[0]
    print("distinct worker threads that wrote:", workers)


if __name__ == "__main__":
    main()
