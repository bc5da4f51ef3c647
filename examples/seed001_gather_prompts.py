"""Seed 001: the prompts of a batch sent concurrently (asyncio), with first-result time.

python examples/seed001_gather_prompts.py
"""

from __future__ import annotations

import asyncio

from _endpoint import endpoint
from openai import AsyncOpenAI

import conveyor


async def main() -> None:
    prompts = [f"Summarise item {i}" for i in range(40)]
    with endpoint(rate_429=0.05) as base_url:
        client = AsyncOpenAI(base_url=base_url, max_retries=0)

        async def complete(prompt: str) -> str:
            # The SDK's RateLimitError / APIConnectionError are retried by conveyor.
            reply = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
            )
            usage = reply.usage
            if usage is not None:
                conveyor.report_usage(
                    input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens
                )
            return reply.choices[0].message.content or ""

        report = await conveyor.arun(prompts, complete, concurrency=10, rpm=6000, retries=5)
        await client.close()
    print(report.summary())
    print(f"first result after {report.first_result_seconds:.3f}s")  # the team's metric
    print("completions:", report.counts["ok"], "failures:", len(report.failures()))


if __name__ == "__main__":
    asyncio.run(main())
