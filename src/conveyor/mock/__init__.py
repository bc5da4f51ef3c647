"""A simulated OpenAI-compatible server: latency, faults and rate limits on loopback.

conveyor's tests and benchmarks talk to it over real HTTP. Every answer is a
pure function of the request (`expected_content`, `expected_embeddings`,
`count_prompt_tokens`), so a test can check each result against its request.

How one request is handled, in order:

1. unknown path → 404, wrong method → 405, bad or missing bearer key → 401;
2. invalid JSON or a missing/ill-typed field → 400, unknown model → 404;
3. one random draw picks an injected fault (429, 500, 503, connection reset,
   hang) by the configured rates; a hang lasts until the client gives up, the
   server stops, or ``hang_seconds`` pass (then the request carries on);
4. the sliding-window limiter admits and charges the request (1 request and
   ``prompt + completion`` tokens) or answers 429 with ``Retry-After``;
5. ``latency + uniform(0, jitter)`` seconds pass, then the answer is sent.

Steps 1, 2 and 4 answer at once; injected faults wait the latency first.
Only 200 answers are charged to the limits and logged in `MockStats.admissions`.
When ``rpm``/``tpm`` are set, every answer carries the ``x-ratelimit-*``
headers for that limit; ``x-ratelimit-reset-*`` is the time until the window
is empty again.
"""

from ._config import MockConfig, MockStats
from ._content import count_prompt_tokens, expected_content, expected_embeddings
from ._server import MockServer, serve

__all__ = [
    "MockConfig",
    "MockServer",
    "MockStats",
    "count_prompt_tokens",
    "expected_content",
    "expected_embeddings",
    "serve",
]
