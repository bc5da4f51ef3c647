"""The Ray backend: the same batch on a cluster, under one global rate limit.

    from conveyor.ray import run_ray

    report = run_ray(prompts, call_model, address="auto", actors=8,
                     concurrency=2000, rpm=10_000, tpm=2_000_000, cost=estimate)

Items are read lazily on the driver and sent in chunks to `actors` async Ray
actors, each running conveyor's engine with its share of `concurrency`.
Every actor leases request and token budget from one limiter actor, so the
per-minute limits hold across the cluster, and a 429 seen by one actor
pauses them all. Results stream back to the driver, which keeps the
callbacks, the report and (with `conveyor run --ray`) the journal and the
output file, so resume and exactly-once output work as on one machine. A
worker that dies loses nothing: its unfinished items run on another one,
and each item is still reported exactly once.

`address`: `"local"` starts Ray on this machine (and stops it afterwards),
`"auto"` joins the cluster this machine belongs to (`ray start` ran here),
anything else is a cluster address (`ray://HEAD:10001`, `HEAD:6379`). When
Ray is already initialised in this process, that instance is used as is.

Ray is an optional extra: `pip install 'conveyor[ray]'`. Every node needs
the same conveyor and the modules `fn` imports (or pass a Ray `runtime_env`
through `actor_options`).
"""

from ._driver import WorkersLost
from ._pool import RayConnectError, RayNotInstalled
from ._run import ClusterStream, arun_ray, check_ray_available, run_ray, stream_ray

__all__ = [
    "ClusterStream",
    "RayConnectError",
    "RayNotInstalled",
    "WorkersLost",
    "arun_ray",
    "check_ray_available",
    "run_ray",
    "stream_ray",
]
