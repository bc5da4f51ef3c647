"""One client run of `openai_throughput.py`, alone in its own process.

    python benchmarks/_bench_clients.py SPEC.json

SPEC (JSON) names the client and its inputs; the run writes a JSON result to
`spec["result"]`: the answers it got (custom_id, content), wall time and CPU
over the measured span, and peak RSS. The span starts before the input is
read (conveyor reads it itself inside `run_file`) and ends when every answer
is in hand, so imports and process start-up are left out for every client
alike. Peak RSS is `ru_maxrss` of the whole process, imports included.

Clients:

- `conveyor`: `conveyor.openai.run_file` (the parent reads its output file).
- `threadpool`: seed 000 — `ThreadPoolExecutor(max_workers=5)`, chunks of 5,
  `concurrent.futures.wait` per chunk, the sync `openai.OpenAI` client.
- `gather`: seed 001 — `asyncio.gather` over chunks of `batch` prompts, one
  `AsyncOpenAI`; the next chunk starts when the whole chunk is done.
- `semaphore`: the best hand-written loop — `asyncio.Semaphore(concurrency)`
  and one `gather` over every item, one `AsyncOpenAI`.
- `cookbook`: the OpenAI cookbook's parallel processor's algorithm (a
  capacity of one minute per limit, refilled continuously; 15 s pause after a
  429), with aiohttp, told `rpm`/`tpm` as that script is.

Every baseline uses the SDK's own retries (`max_retries=5`). A run that is not
done by `spec["deadline"]` seconds stops and reports what it answered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import resource
import signal
import sys
import threading
import time
from collections import Counter
from typing import Any

import orjson

_API_KEY = "bench-key"  # the mock server accepts any key unless told one


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _read_lines(path: str, max_items: int | None) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for raw in f:
            if max_items is not None and len(lines) >= max_items:
                break
            lines.append(orjson.loads(raw))
    return lines


class _Tally:
    """What a baseline got back: answers in arrival order and error kinds."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, str | None]] = []
        self.errors: Counter[str] = Counter()
        self.samples: list[str] = []

    def ok(self, custom_id: str, response: Any) -> None:
        self.answers.append((custom_id, response.choices[0].message.content))

    def fail(self, custom_id: str, exc: BaseException) -> None:
        self.errors[type(exc).__name__] += 1
        if len(self.samples) < 3:
            self.samples.append(f"{custom_id}: {type(exc).__name__}: {str(exc)[:160]}")


# -- (a) seed 000: ThreadPoolExecutor(5), chunks of 5, wait per chunk ---------


def run_threadpool(spec: dict[str, Any], tally: _Tally, deadline: float) -> tuple[bool, int]:
    import openai

    lines = _read_lines(spec["input"], spec.get("max_items"))
    client = openai.OpenAI(
        base_url=spec["base_url"], api_key=_API_KEY, max_retries=5, timeout=spec["timeout"]
    )

    def call(line: dict[str, Any]) -> Any:
        return client.chat.completions.create(**line["body"])

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=5)
    for start in range(0, len(lines), 5):
        chunk = lines[start : start + 5]
        futures = {pool.submit(call, line): line["custom_id"] for line in chunk}
        done, pending = concurrent.futures.wait(
            futures, timeout=max(0.0, deadline - time.perf_counter())
        )
        for fut in done:
            exc = fut.exception()
            if exc is None:
                tally.ok(futures[fut], fut.result())
            else:
                tally.fail(futures[fut], exc)
        if pending:
            # Threads cannot be cancelled: the caller exits the process hard.
            return False, len(lines)
    pool.shutdown(wait=True)
    client.close()
    return True, len(lines)


# -- (b) seed 001: asyncio.gather over chunks; (c) Semaphore + one gather -------


async def _gather_chunks(spec: dict[str, Any], tally: _Tally, lines: list[dict[str, Any]]) -> None:
    import openai

    batch = int(spec["batch"])
    async with openai.AsyncOpenAI(
        base_url=spec["base_url"], api_key=_API_KEY, max_retries=5, timeout=spec["timeout"]
    ) as client:

        async def one(line: dict[str, Any]) -> None:
            try:
                tally.ok(line["custom_id"], await client.chat.completions.create(**line["body"]))
            except Exception as exc:
                tally.fail(line["custom_id"], exc)

        for start in range(0, len(lines), batch):
            await asyncio.gather(*(one(line) for line in lines[start : start + batch]))


async def _semaphore(spec: dict[str, Any], tally: _Tally, lines: list[dict[str, Any]]) -> None:
    import openai

    sem = asyncio.Semaphore(int(spec["concurrency"]))
    async with openai.AsyncOpenAI(
        base_url=spec["base_url"], api_key=_API_KEY, max_retries=5, timeout=spec["timeout"]
    ) as client:

        async def one(line: dict[str, Any]) -> None:
            async with sem:
                try:
                    response = await client.chat.completions.create(**line["body"])
                except Exception as exc:
                    tally.fail(line["custom_id"], exc)
                else:
                    tally.ok(line["custom_id"], response)

        await asyncio.gather(*(one(line) for line in lines))


def run_async(spec: dict[str, Any], tally: _Tally, deadline: float) -> tuple[bool, int]:
    lines = _read_lines(spec["input"], spec.get("max_items"))
    body = {"gather": _gather_chunks, "cookbook": _cookbook}.get(spec["client"], _semaphore)

    async def bounded() -> bool:
        try:
            await asyncio.wait_for(
                body(spec, tally, lines), max(0.0, deadline - time.perf_counter())
            )
        except TimeoutError:
            return False
        return True

    return asyncio.run(bounded()), len(lines)


# -- (d) the OpenAI cookbook's parallel processor, as its algorithm is documented --
#
# Written here from its published description, not copied: capacity for
# requests and tokens, each starting at the per-minute limit and refilled
# continuously at limit/60 per second up to that limit; a request is sent when
# both hold enough (tokens: its prompt estimate + max_tokens); a 429 pauses
# every new request for 15 s; each request is tried a fixed number of times.


class _Answer:
    """Just enough of the SDK's response shape for `_Tally.ok`."""

    def __init__(self, body: dict[str, Any]) -> None:
        content = body["choices"][0]["message"]["content"]
        msg = type("M", (), {"content": content})
        self.choices = [type("C", (), {"message": msg})]


async def _cookbook(spec: dict[str, Any], tally: _Tally, lines: list[dict[str, Any]]) -> None:
    import aiohttp

    rpm = float(spec.get("rpm") or 1e9)
    tpm = float(spec.get("tpm") or 1e12)
    attempts_each = 6
    pause_after_429 = 15.0
    req_cap, tok_cap = rpm, tpm
    last = time.monotonic()
    last_429 = -1e9
    queue: list[tuple[dict[str, Any], int]] = [(line, attempts_each) for line in lines]
    queue.reverse()
    retry: list[tuple[dict[str, Any], int]] = []
    in_flight = 0
    done = asyncio.Event()
    remaining = len(lines)
    url = spec["base_url"].rstrip("/") + "/chat/completions"

    def cost(line: dict[str, Any]) -> float:
        body = line["body"]
        chars = sum(len(m.get("content") or "") for m in body.get("messages", []))
        return chars / 4 + 4 * len(body.get("messages", [])) + float(body.get("max_tokens") or 15)

    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {_API_KEY}"},
        connector=aiohttp.TCPConnector(limit=0),
    ) as session:

        async def one(line: dict[str, Any], left: int) -> None:
            nonlocal in_flight, remaining, last_429
            try:
                async with session.post(url, json=line["body"]) as resp:
                    body = await resp.json(content_type=None)
                    status = resp.status
            except Exception as exc:
                status, body = 0, {"error": str(exc)}
            in_flight -= 1
            if status == 200:
                tally.ok(line["custom_id"], _Answer(body))
            else:
                if status == 429:
                    last_429 = time.monotonic()
                if left > 1:
                    retry.append((line, left - 1))
                    return
                tally.fail(line["custom_id"], RuntimeError(f"HTTP {status}"))
            remaining -= 1
            if remaining == 0:
                done.set()

        tasks: set[asyncio.Task[None]] = set()
        while remaining > 0:
            now = time.monotonic()
            req_cap = min(rpm, req_cap + (now - last) * rpm / 60)
            tok_cap = min(tpm, tok_cap + (now - last) * tpm / 60)
            last = now
            nxt = retry.pop(0) if retry else (queue.pop() if queue else None)
            if nxt is None:
                await asyncio.sleep(0.001)
                continue
            need = cost(nxt[0])
            if now - last_429 < pause_after_429:
                retry.insert(0, nxt)
                await asyncio.sleep(pause_after_429 - (now - last_429))
                continue
            if req_cap >= 1 and tok_cap >= need and in_flight < int(spec["concurrency"]):
                req_cap -= 1
                tok_cap -= need
                in_flight += 1
                t = asyncio.create_task(one(*nxt))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            else:
                retry.insert(0, nxt)
                await asyncio.sleep(0.001)
        await done.wait()


# -- conveyor ------------------------------------------------------------------


def run_conveyor(spec: dict[str, Any], result: dict[str, Any], deadline: float) -> tuple[bool, int]:
    from conveyor.openai import run_file

    kwargs: dict[str, Any] = dict(spec["conveyor"])
    # At the deadline conveyor gets a Ctrl+C: it stops admitting, finishes what
    # is in flight and flushes, like a user giving up on a run.
    timer = threading.Timer(
        max(0.0, deadline - time.perf_counter()), os.kill, (os.getpid(), signal.SIGINT)
    )
    timer.daemon = True
    timer.start()
    finished = True
    report: Any
    try:
        report = run_file(
            spec["input"],
            base_url=spec["base_url"],
            api_key=_API_KEY,
            concurrency=int(spec["concurrency"]),
            retries=5,
            timeout=spec["timeout"],
            **kwargs,
        )
    except BaseException as exc:  # Interrupted carries the partial report
        report = getattr(exc, "report", None)
        finished = False
        result["error"] = f"{type(exc).__name__}: {exc}"[:300]
        if report is None:
            return False, 0
    finally:
        timer.cancel()
    result["counts"] = dict(report.counts)
    result["retries"] = report.retries
    result["attempts"] = report.attempts
    result["errors"] = dict(report.errors)
    result["report_extra"] = {
        k: v for k, v in report.extra.items() if isinstance(v, int | float | str | type(None))
    }
    return finished and not report.interrupted, report.total


def main(spec_path: str) -> None:
    spec: dict[str, Any] = orjson.loads(open(spec_path, "rb").read())  # noqa: SIM115
    import openai  # noqa: F401 - imported before the span for every client alike

    import conveyor.openai  # noqa: F401

    result: dict[str, Any] = {"client": spec["client"]}
    tally = _Tally()
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
    cpu0, t0 = _cpu(), time.perf_counter()
    deadline = t0 + float(spec["deadline"])
    if profiler is not None:
        profiler.enable()
    if spec["client"] == "conveyor":
        finished, n = run_conveyor(spec, result, deadline)
    elif spec["client"] == "threadpool":
        finished, n = run_threadpool(spec, tally, deadline)
    else:
        finished, n = run_async(spec, tally, deadline)
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    if profiler is not None:
        profiler.dump_stats(spec["profile"])
    result.update(
        finished=finished,
        items=n,
        wall=wall,
        cpu=cpu,
        cpu_process=_cpu(),
        maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    )
    if spec["client"] != "conveyor":
        result["answers"] = tally.answers
        result["errors"] = dict(tally.errors)
        result["error_samples"] = tally.samples
    with open(spec["result"], "wb") as f:
        f.write(orjson.dumps(result))
    if not finished:
        # Threads still blocked in the SDK would keep the process alive.
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1])
