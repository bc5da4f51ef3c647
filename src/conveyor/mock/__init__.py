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
4. the limits admit and charge the request (1 request, and prompt + completion
   cap tokens, as OpenAI counts them) or refuse it: a 429 with the provider's
   body, or `insufficient_quota` once ``quota_after`` requests were admitted;
5. ``latency + uniform(0, jitter)`` seconds pass, then the answer is sent.

Steps 1, 2 and 4 answer at once; injected faults wait the latency first.
Structured requests (json_schema formats, function tools) get JSON fitting
their schema, or at configured rates invalid JSON / schema violations
(`mock._structured`; counted in `MockStats.structured`).

Only 200 answers are charged to the limits and logged in `MockStats.admissions`.

Limits are metered the way real servers document it (`mock._meters`): by
default a bucket holding the whole minute and refilled continuously (OpenAI),
or `burst` seconds of it, a fixed window or a sliding log; every answer
carries the true state in OpenAI's `x-ratelimit-*` headers, Anthropic's
`anthropic-ratelimit-*`, or none (`MockConfig.headers`).
"""

from ._config import MockConfig, MockStats
from ._content import count_prompt_tokens, expected_content, expected_embeddings
from ._server import MockServer, serve
from ._structured import conversation_key, minimal_instance

__all__ = [
    "MockConfig",
    "MockServer",
    "MockStats",
    "conversation_key",
    "count_prompt_tokens",
    "expected_content",
    "expected_embeddings",
    "minimal_instance",
    "serve",
]
