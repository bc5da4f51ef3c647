"""Seed 003: 5 workers, each with its own DB connection, after a preflight that can block;
a staged rollout (10 jobs first, then the rest), with memory, CPU, GPU and the DB
connections monitored while it runs (the run stops if connections pass 80% of the pool).

python examples/seed003_workers_and_preflight.py
(on the command line: conveyor run --max-gpu-memory 95 --check mychecks:db_reachable
 --monitor --gauge db=mypool:in_use --limit db=8 ...;
GPU jobs: conveyor exec -j 2 --monitor -- env CUDA_VISIBLE_DEVICES={%} infer {} ::: a b c d)
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path

import conveyor

DB = Path(tempfile.mkdtemp()) / "interactions.db"
POOL_SIZE = 10
local = threading.local()
connections = 0  # open now: the gauge the monitor samples
lock = threading.Lock()


def open_connection() -> None:  # worker_init: once in each of the 5 worker threads
    global connections
    local.db = sqlite3.connect(DB)
    with lock:
        connections += 1


def close_connection() -> None:  # worker_teardown: when the pool closes
    global connections
    local.db.close()
    with lock:
        connections -= 1


def db_reachable() -> str | None:  # our own check: None passes, a reason blocks the run
    try:
        sqlite3.connect(DB).execute("SELECT count(*) FROM results")
    except sqlite3.Error as exc:
        return f"database not ready: {exc}"
    return None


def disk_has_room() -> bool:
    return shutil.disk_usage(DB.parent).free > 100 * 2**20


def process(job_id: int) -> int:
    local.db.execute("INSERT INTO results VALUES (?, ?)", (job_id, threading.get_ident()))
    local.db.commit()
    return job_id


def main() -> None:
    try:
        conveyor.run(range(5), process, preflight=[db_reachable])
    except conveyor.PreflightFailed as exc:
        print("blocked as it should be:", exc)
    with sqlite3.connect(DB) as db:
        db.execute("CREATE TABLE results (job_id INTEGER, worker INTEGER)")
    monitor = conveyor.Monitor(
        interval=0.1,
        gauges={"db_connections": lambda: connections},
        # Seed 003's go/no-go list, enforced while it runs, not only before.
        limits={"db_connections": 0.8 * POOL_SIZE, "gpu_memory_percent": 95},
    )
    test_size = 10
    for stage in (range(test_size), range(test_size, 100)):
        report = conveyor.run(
            stage,
            process,
            concurrency=5,
            worker_init=open_connection,
            worker_teardown=close_connection,
            preflight=[db_reachable, disk_has_room],
            monitor=monitor,
        )
        print(report.summary())  # peaks of memory, CPU, DB connections; GPU if present
    with sqlite3.connect(DB) as db:
        rows = db.execute("SELECT count(*) FROM results").fetchone()[0]
    print("rows written:", rows)


if __name__ == "__main__":
    main()
