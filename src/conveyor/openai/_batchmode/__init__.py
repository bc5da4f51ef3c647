"""Provider batch mode: `run_file(..., mode="batch")` / `conveyor run --mode batch`.

- `_policy`: the pure decisions (sharder, enqueued-token budget, poll
  schedule, stuck detector, deadline), with plain numbers and a clock.
- `_api`: the Files and Batches calls over aiohttp.
- `_merge`: output/error-file lines -> results.
- `_driver`: carries the decisions out, with the shard states in the journal.
- `_runner`: one run: the same input reader, journal and output sink as online.
- `_cost`: lines per path at batch and online prices.
"""

from ._runner import arun_batch

__all__ = ["arun_batch"]
