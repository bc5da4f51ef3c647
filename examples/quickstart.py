"""A first look at conveyor: a flaky "API" called 200 times, concurrently.

python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import random

import conveyor


async def flaky_api(prompt: str) -> str:
    """Stands in for a remote call: 50-150 ms, fails transiently 10% of the time."""
    await asyncio.sleep(random.uniform(0.05, 0.15))
    if random.random() < 0.10:
        raise conveyor.RetryableError("503 from upstream", status_code=503)
    if prompt.endswith("13"):
        raise ValueError(f"cannot handle {prompt!r}")  # a permanent error: not retried
    conveyor.report_usage(input_tokens=len(prompt) // 4 + 1, output_tokens=8)
    return prompt.upper()


def main() -> None:
    prompts = [f"prompt {i}" for i in range(200)]
    report = conveyor.run(
        prompts,
        flaky_api,
        concurrency=50,
        timeout=2.0,
        retries=conveyor.RetryPolicy(retries=3, base=0.05, cap=0.5),
        key=lambda p: p.replace(" ", "-"),
    )
    print(report.summary())
    for r in report.failures()[:3]:
        print(f"  {r.key}: {r.status.value} after {r.attempts} attempt(s): {r.error.message}")


if __name__ == "__main__":
    main()
