"""conveyor against the hand-written OpenAI loops it replaces, side by side.

    .venv/bin/python benchmarks/openai_throughput.py [--scenario NAME ...] [--client NAME ...]
                                                     [--quick] [--profile]

Every run talks to the simulated server (`conveyor.mock.MockServer`) on
loopback. The server lives in its own process and is started afresh for each
client run, so rate-limit windows start empty; each client runs in its own
fresh process (`_bench_clients.py`), so its CPU and peak RSS are its own.

Clients: conveyor (`conveyor.openai.run_file`); (a) seed 000's
`ThreadPoolExecutor(5)` over chunks of 5 with the sync SDK; (b) seed 001's
`asyncio.gather` over chunks with `AsyncOpenAI`; (c) an `asyncio.Semaphore`
sliding window with `AsyncOpenAI`. Baselines use the SDK's retries
(`max_retries=5`). Scenarios:

  c100          N=2,000, 100 ms, concurrency 100            (ideal 2.0 s)
  c1000         N=10,000, 200 ms, concurrency 1,000         (ideal 2.0 s), journal on/off
  known-limit   server 500 req / 5 s window (6,000/min), client told the same; N=1,000
  token-limit   server tokens / 5 s window (100 req/s), client told the same; N=1,000
  headers-only  server 12,000 req / 60 s, client told nothing (learns x-ratelimit-*); N=3,000
  faults        5% 500 + 5% 429 + 1% connection resets; N=1,000 at 100 ms, c=100

Columns: wall seconds over the client's measured span (input read to last
answer), ratio to the ideal, client CPU (user+sys) ms per request over the
same span (= CPU seconds per 1,000 requests), peak RSS of the client process,
429s the server sent, the server's peak in-flight count and CPU, and
completeness: answers that match `expected_content(body)`, each custom_id
exactly once, over the items sent.
Limit scenarios add the achieved rate: admissions (requests or tokens) in the
whole windows from the first admission, as a share of the limit. Marks: `~`
ran on the first items and extrapolated; `>` stopped at its deadline (CPU is
then per answered request); `#` counted, not content-checked.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import resource
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from conveyor.mock import MockConfig, count_prompt_tokens, expected_content

HERE = Path(__file__).resolve().parent
CLIENTS = HERE / "_bench_clients.py"
MODEL = "mock-gpt"
MAX_TOKENS = 32
COMPLETION_TOKENS = MockConfig().completion_tokens  # what the mock answers with


# -- scenarios -----------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    client: str  # conveyor | threadpool | gather | semaphore
    label: str
    journal: bool = False
    max_items: int | None = None  # run on the first items only and extrapolate
    batch: int | None = None
    skip: str | None = None
    deadline: float | None = None  # else the scenario's
    repeat: int = 1  # keep the fastest of this many runs (noise on a shared machine)


@dataclass
class Scenario:
    name: str
    title: str
    n: int
    latency: float
    concurrency: int
    rows: list[Row]
    deadline: float
    server: dict[str, Any] = field(default_factory=dict)
    client_limits: dict[str, Any] = field(default_factory=dict)
    # ("requests" | "tokens", limit per window, window seconds): a known limit
    rate: tuple[str, float, float] | None = None
    ideal_note: str = "N / concurrency x latency"
    note: str = ""

    def ideal(self, tokens_per_request: int) -> float:
        base = self.n / self.concurrency * self.latency
        if self.rate is None:
            return base
        kind, limit, window = self.rate
        per = 1 if kind == "requests" else tokens_per_request
        return max(base, self.n * per / (limit / window))


_THREADS = "(a) threads 5, chunks of 5"
_BELOW = "5 in flight x 100 ms = 50 req/s, below the limit: it never meets it (speed: c100)"


def _rows(
    concurrency: int,
    *,
    sample: int | None,
    journal: bool,
    journal_row: bool = False,
    short: float | None = None,
    repeat: int = 1,
) -> list[Row]:
    """conveyor, then (a), (b), (c). `sample=None` skips (a).

    Without a journal `run_file` writes no output file, so conveyor's answers
    can only be counted: where completeness is a target the journal is on and
    the output file is checked line by line.
    """
    label = "conveyor (journal)" if journal else "conveyor"
    rows = [Row("conveyor", label, journal=journal, repeat=repeat)]
    if journal_row:
        rows.append(Row("conveyor", "conveyor (journal)", journal=True, repeat=repeat))
    if sample is None:
        rows.append(Row("threadpool", _THREADS, skip=_BELOW))
    else:
        rows.append(Row("threadpool", _THREADS, max_items=sample))
    rows.append(
        Row("gather", f"(b) gather, chunks of {concurrency}", batch=concurrency, deadline=short)
    )
    rows.append(Row("semaphore", f"(c) Semaphore({concurrency}) + gather", deadline=short))
    return rows


_SLIDING = (
    "the mock's limit is a sliding window: a client that spends a whole window at once and "
    "then waits out Retry-After can finish before N / rate"
)


def scenarios(quick: bool, tokens_per_request: int) -> dict[str, Scenario]:
    q = 2 if quick else 1
    # Known limits: 6,000 requests a minute as 500 per 5 s window, so a run
    # spans a few windows in seconds (conveyor takes `limit_window` too).
    window = 5.0
    per_window = 500 // q
    token_limit = per_window * tokens_per_request
    known = {"limit_window": window}
    return {
        s.name: s
        for s in (
            Scenario("c100", "the common case: 100 in flight", 2000 // q, 0.1, 100,
                     _rows(100, sample=250 // q, journal=False, repeat=2), deadline=60),
            # At 1,000 in flight the SDK needs ~6 ms of CPU a request, 70-90 s for
            # the whole input: (b) and (c) get 20 s and their pace is extrapolated.
            Scenario("c1000", "1,000 in flight; CPU-bound on 2 cores shared with the server",
                     10000 // q, 0.2, 1000,
                     _rows(1000, sample=250 // q, journal=False, journal_row=True, short=20.0,
                           repeat=2), deadline=60),
            Scenario("known-limit",
                     f"server limit {per_window} requests / {window:g} s; client told the same",
                     2 * per_window, 0.1, 100, _rows(100, sample=None, journal=True),
                     deadline=60, server={"rpm": per_window, **known},
                     client_limits={"rpm": per_window, **known},
                     rate=("requests", per_window, window), ideal_note="N / allowed rate",
                     note=_SLIDING),
            Scenario("token-limit",
                     f"server limit {token_limit} tokens / {window:g} s "
                     f"({tokens_per_request} a request); client told the same",
                     2 * per_window, 0.1, 100, _rows(100, sample=None, journal=True),
                     deadline=60, server={"tpm": token_limit, **known},
                     client_limits={"tpm": token_limit, **known},
                     rate=("tokens", token_limit, window), ideal_note="tokens / allowed rate",
                     note=_SLIDING),
            Scenario("headers-only",
                     "server limit 12,000 requests / 60 s in x-ratelimit-* headers; "
                     "client told nothing",
                     3000 // q, 0.1, 100, _rows(100, sample=None, journal=True), deadline=60,
                     server={"rpm": 12000, "limit_window": 60.0},
                     ideal_note="N / concurrency x latency: the 60 s window allows it",
                     note="N is below the limit, so the server never has to refuse; what "
                          "differs is how each client paces itself once it reads the headers"),
            Scenario("faults", "5% 500s, 5% 429s (Retry-After 1 s), 1% connection resets",
                     1000 // q, 0.1, 100, _rows(100, sample=100 // q, journal=True),
                     deadline=75,
                     server={"rate_500": 0.05, "rate_429": 0.05, "rate_reset": 0.01}),
        )
    }  # fmt: skip


# -- input ---------------------------------------------------------------------


def body_for(i: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Item {i:06d}: name one colour in a word."}],
        "max_tokens": MAX_TOKENS,
    }


def write_input(path: Path, n: int) -> dict[str, str]:
    """The Batch input file; returns custom_id -> the content the server will answer."""
    expected: dict[str, str] = {}
    with path.open("wb") as f:
        for i in range(n):
            cid = f"req-{i:06d}"
            body = body_for(i)
            expected[cid] = expected_content(body)
            line = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions"}
            f.write(orjson.dumps({**line, "body": body}) + b"\n")
    return expected


def tokens_per_request() -> int:
    """What the mock charges one request: prompt + min(max_tokens, its completion)."""
    return count_prompt_tokens(body_for(0)) + min(MAX_TOKENS, COMPLETION_TOKENS)


# -- the server process ----------------------------------------------------------


def serve_main(config_json: str) -> None:
    """`--_serve`: host a MockServer until a line (or EOF) on stdin; then print its stats."""
    import asyncio

    from conveyor.mock import MockServer

    async def main() -> dict[str, Any]:
        server = MockServer(MockConfig(**orjson.loads(config_json)))
        url = await server.start()
        print(url, flush=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def wait_stdin() -> None:
            sys.stdin.readline()
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=wait_stdin, daemon=True).start()
        await stop.wait()
        await server.stop()
        st = server.stats
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "requests": st.requests,
            "statuses": {str(k): v for k, v in st.statuses.items()},
            "faults": dict(st.faults),
            "max_in_flight": st.max_in_flight,
            "tokens": st.tokens,
            "admissions": list(st.admissions),
            "cpu": ru.ru_utime + ru.ru_stime,
        }

    stats = asyncio.run(main())
    sys.stdout.write(orjson.dumps(stats).decode() + "\n")
    sys.stdout.flush()


class ServerProcess:
    """A fresh `--_serve` subprocess; `stop()` returns its stats."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--_serve", orjson.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], 30.0)
        line = self._proc.stdout.readline().strip() if ready else ""
        if not line.startswith("http://"):
            self._proc.kill()
            self._proc.wait()
            raise RuntimeError(f"the mock server process did not start (got {line!r})")
        self.url = line

    def stop(self) -> dict[str, Any]:
        proc = self._proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 30.0)
            out = proc.stdout.readline() if ready else ""
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdin.close()
            proc.stdout.close()
        return dict(orjson.loads(out)) if out else {}


# -- one client run ----------------------------------------------------------------


@dataclass
class Outcome:
    row: Row
    result: dict[str, Any] | None
    stats: dict[str, Any]
    expected_n: int
    correct: int = 0
    duplicates: int = 0
    wrong: int = 0
    counted_only: bool = False
    stopped: bool = False
    note: str = ""

    @property
    def n429(self) -> int:
        return int(self.stats.get("statuses", {}).get("429", 0))


def check_answers(
    pairs: list[tuple[str, str | None]], expected: dict[str, str]
) -> tuple[int, int, int]:
    """(right answers for distinct custom_ids, repeated ids, wrong or unknown answers)."""
    seen = Counter(cid for cid, _ in pairs)
    right = {cid for cid, text in pairs if cid in expected and text == expected[cid]}
    correct = sum(1 for cid in right if seen[cid] == 1)
    duplicates = sum(c - 1 for c in seen.values() if c > 1)
    wrong = sum(1 for cid, text in pairs if expected.get(cid) != text)
    return correct, duplicates, wrong


def conveyor_pairs(output: Path) -> list[tuple[str, str | None]]:
    from conveyor.openai import read_output

    pairs: list[tuple[str, str | None]] = []
    for obj in read_output(output):
        resp = obj.get("response") or {}
        text: str | None = None
        if resp.get("status_code") == 200:
            text = resp["body"]["choices"][0]["message"]["content"]
        pairs.append((obj["custom_id"], text))
    return pairs


def run_row(
    sc: Scenario,
    row: Row,
    input_path: Path,
    expected: dict[str, str],
    workdir: Path,
    profile: Path | None = None,
) -> Outcome:
    deadline = row.deadline or sc.deadline
    tag = f"{sc.name}-{row.label.split()[0].strip('()')}-{'j' if row.journal else 'n'}"
    output = workdir / f"{tag}.out.jsonl"
    for p in (output, output.with_name(output.name + ".conveyor.db")):
        p.unlink(missing_ok=True)
    result_path = workdir / f"{tag}.result.json"
    result_path.unlink(missing_ok=True)
    spec: dict[str, Any] = {
        "client": row.client,
        "input": str(input_path),
        "concurrency": sc.concurrency,
        "batch": row.batch,
        "max_items": row.max_items,
        "deadline": deadline,
        "timeout": 60.0,
        "result": str(result_path),
        "profile": None if profile is None else str(profile),
        "conveyor": {
            "output": str(output),
            "journal": True if row.journal else None,
            "dedupe": False,
            **sc.client_limits,
        },
    }
    spec_path = workdir / f"{tag}.spec.json"
    spec_path.write_bytes(orjson.dumps(spec))
    server = ServerProcess({"latency": sc.latency, "seed": 7, **sc.server})
    note = ""
    try:
        spec["base_url"] = server.url
        spec_path.write_bytes(orjson.dumps(spec))
        try:
            proc = subprocess.run(
                [sys.executable, str(CLIENTS), str(spec_path)],
                timeout=deadline + 45,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                note = f"client exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
        except subprocess.TimeoutExpired:
            note = f"killed after {deadline + 45:g} s"
    finally:
        stats = server.stop()
    result = orjson.loads(result_path.read_bytes()) if result_path.exists() else None
    n_expected = row.max_items or sc.n
    out = Outcome(row, result, stats, n_expected, note=note)
    if result is None:
        return out
    if row.client == "conveyor":
        if output.exists():
            pairs = conveyor_pairs(output)
            out.correct, out.duplicates, out.wrong = check_answers(pairs, expected)
        else:
            out.counted_only = True
            out.correct = int(result.get("counts", {}).get("ok", 0))
    else:
        pairs = [(str(c), t) for c, t in result["answers"]]
        sub = dict(list(expected.items())[:n_expected])
        out.correct, out.duplicates, out.wrong = check_answers(pairs, sub)
    if not result["finished"]:
        out.stopped = True
        out.note = (
            f"stopped at the {deadline:g} s deadline with {out.correct} of {n_expected} "
            f"answered ({out.correct / max(1e-9, float(result['wall'])):.0f}/s)" + out.note
        )
    errs = result.get("errors") or {}
    if errs:
        out.note += " errors: " + ", ".join(f"{k} x{v}" for k, v in errs.items())
    return out


def best_of(
    sc: Scenario, row: Row, input_path: Path, expected: dict[str, str], workdir: Path
) -> Outcome:
    """The fastest of `row.repeat` runs (finished runs first)."""
    runs = [run_row(sc, row, input_path, expected, workdir) for _ in range(row.repeat)]

    def key(o: Outcome) -> tuple[bool, float]:
        done = o.result is not None and not o.stopped
        return (not done, float(o.result["wall"]) if o.result else math.inf)

    best = min(runs, key=key)
    if row.repeat > 1:
        walls = ", ".join(f"{o.result['wall']:.2f}" for o in runs if o.result)
        best.note = f"best of {row.repeat} runs (wall s: {walls}) " + best.note
    return best


# -- metrics and tables --------------------------------------------------------------


def achieved_share(stats: dict[str, Any], rate: tuple[str, float, float]) -> float | None:
    """Admissions in the whole windows after the first one started, over the limit.

    The server's sliding window never admits more than `limit` in any window,
    so a client that keeps it busy scores 1.0 whether it bursts or paces.
    """
    kind, limit, window = rate
    adm = stats.get("admissions") or []
    if not adm:
        return None
    t0 = adm[0][0]
    k = math.floor((adm[-1][0] - t0) / window)
    if k < 1:
        return None
    end = t0 + k * window
    used = sum((1 if kind == "requests" else int(w)) for t, w in adm if t < end)
    return float(used / (k * limit))


@dataclass
class Measured:
    wall: float | None  # extrapolated for sampled rows
    ratio: float | None
    cpu_ms: float | None
    rss_mb: float | None
    complete: float
    share: float | None
    server_cpu: float | None


def measure(sc: Scenario, o: Outcome, ideal: float) -> Measured:
    r = o.result
    if r is None:
        return Measured(None, None, None, None, 0.0, None, None)
    # A stopped run is charged per answer, not per item it never reached.
    items = max(1, o.correct if o.stopped else int(r["items"]))
    wall = float(r["wall"])
    if o.row.max_items is not None and r["finished"]:
        wall *= sc.n / items
    share = achieved_share(o.stats, sc.rate) if sc.rate else None
    return Measured(
        wall,
        wall / ideal,
        float(r["cpu"]) / items * 1000,
        r["maxrss_kb"] / 1024,
        o.correct / o.expected_n,
        share,
        o.stats.get("cpu"),
    )


def render(sc: Scenario, outcomes: list[Outcome], ideal: float) -> str:
    head = ["client", "wall s", "x ideal", "CPU ms/req", "RSS MB", "429s", "srv peak",
            "srv CPU s", "complete %"]  # fmt: skip
    if sc.rate:
        head.append("rate %")
    lines: list[list[str]] = []
    notes: list[str] = []
    for o in outcomes:
        if o.row.skip:
            lines.append([o.row.label, "skipped", *[""] * (len(head) - 2)])
            notes.append(f"{o.row.label}: skipped: {o.row.skip}")
            continue
        m = measure(sc, o, ideal)
        if m.wall is None:
            lines.append([o.row.label, "no result", *[""] * (len(head) - 2)])
            notes.append(f"{o.row.label}: {o.note}")
            continue
        sampled = o.row.max_items is not None
        mark = ">" if o.stopped else "~" if sampled else ""
        cells = [
            o.row.label,
            f"{mark}{m.wall:.2f}",
            f"{mark}{m.ratio:.2f}",
            f"{m.cpu_ms:.2f}" if m.cpu_ms is not None else "",
            f"{m.rss_mb:.0f}" if m.rss_mb is not None else "",
            str(o.n429),
            str(o.stats.get("max_in_flight", "")),
            "" if m.server_cpu is None else f"{m.server_cpu:.1f}",
            f"{m.complete * 100:.1f}{'#' if o.counted_only else ''}",
        ]
        if sc.rate:
            cells.append("" if m.share is None else f"{m.share * 100:.1f}")
        lines.append(cells)
        if o.row.max_items is not None and not o.stopped:
            notes.append(
                f"{o.row.label}: ~ ran the first {o.row.max_items} of {sc.n} items, "
                f"wall x {sc.n / o.row.max_items:g}"
            )
        if o.duplicates or o.wrong:
            notes.append(f"{o.row.label}: {o.duplicates} repeated ids, {o.wrong} wrong answers")
        if o.note.strip():
            notes.append(f"{o.row.label}: {o.note.strip()[:300]}")
        if o.counted_only:
            notes.append(
                f"{o.row.label}: # no output file without a journal: counted "
                "report.counts['ok'], content not checked"
            )
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    out = [
        f"== {sc.name}: {sc.title}",
        f"   N={sc.n}, latency {sc.latency * 1000:.0f} ms, concurrency {sc.concurrency}, "
        f"ideal {ideal:.2f} s ({sc.ideal_note})",
        *([f"   note: {sc.note}"] if sc.note else []),
        fmt(head),
        "  ".join("-" * w for w in widths),
        *(fmt(c) for c in lines),
    ]
    out += [f"   {n}" for n in notes]
    return "\n".join(out)


# -- targets ---------------------------------------------------------------------------


@dataclass
class Target:
    text: str
    passed: bool
    figure: str


def targets(done: dict[str, tuple[Scenario, list[Outcome], float]]) -> list[Target]:
    found: list[Target] = []

    def conv(name: str, journal: bool) -> tuple[Scenario, Outcome, Measured] | None:
        if name not in done:
            return None
        sc, outcomes, ideal = done[name]
        for o in outcomes:
            if o.row.client == "conveyor" and o.row.journal == journal:
                if o.result:
                    return sc, o, measure(sc, o, ideal)
                missing = Target(f"{name}: conveyor produced a result", False, o.note[-120:])
                if missing not in found:
                    found.append(missing)
        return None

    c = conv("c100", False)
    if c:
        found.append(Target("c100: conveyor within 1.25x of ideal", c[2].ratio is not None
                            and c[2].ratio <= 1.25, f"{c[2].ratio:.2f}x"))  # fmt: skip
    c = conv("c1000", False)
    if c:
        m = c[2]
        found.append(Target("c1000: conveyor within 2.5x of ideal",
                            m.ratio is not None and m.ratio <= 2.5, f"{m.ratio:.2f}x"))  # fmt: skip
        found.append(Target("c1000: conveyor client CPU <= 0.5 ms/request",
                            m.cpu_ms is not None and m.cpu_ms <= 0.5,
                            f"{m.cpu_ms:.3f} ms"))  # fmt: skip
        j = conv("c1000", True)
        if j and m.wall and j[2].wall:
            cost = j[2].wall / m.wall - 1
            cpu_cost = (j[2].cpu_ms or 0) / (m.cpu_ms or 1) - 1
            figure = f"{cost * 100:+.1f}% wall, {cpu_cost * 100:+.1f}% CPU"
            found.append(Target("c1000: the journal costs < 10% of wall time", cost < 0.10,
                                figure))  # fmt: skip
    for name in ("known-limit", "token-limit"):
        c = conv(name, True)
        if c:
            share = c[2].share
            ok = share is not None and share >= 0.97 and c[1].n429 == 0
            shown = "n/a" if share is None else f"{share * 100:.1f}%"
            found.append(Target(f"{name}: conveyor >= 97% of the allowed rate, zero 429s", ok,
                                f"{shown}, {c[1].n429} x 429"))  # fmt: skip
    c = conv("headers-only", True)
    if c:
        pct = c[1].n429 / max(1, c[1].stats.get("requests", 0)) * 100
        found.append(Target("headers-only: conveyor < 1% of requests answered 429",
                            pct < 1.0, f"{pct:.2f}% ({c[1].n429})"))  # fmt: skip
    for name in ("faults", "known-limit", "token-limit", "headers-only"):
        c = conv(name, True)
        if c:
            o = c[1]
            found.append(Target(f"{name}: conveyor 100% complete (content checked)",
                                o.correct == o.expected_n and not o.duplicates and not o.wrong,
                                f"{c[2].complete * 100:.2f}%"))  # fmt: skip
    return found


# -- profiling ---------------------------------------------------------------------------


def print_profile(path: Path, top: int = 25) -> None:
    import io
    import pstats

    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(str(path), stream=buf).sort_stats(key).print_stats(top)
        text = buf.getvalue()
        start = text.find("   ncalls")
        print(f"-- profile by {key} --")
        print(text[start:] if start >= 0 else text)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", action="append", help="run only these (repeatable)")
    ap.add_argument("--quick", action="store_true", help="half-size inputs and limits")
    ap.add_argument(
        "--client",
        action="append",
        choices=["conveyor", "threadpool", "gather", "semaphore"],
        help="run only these clients (repeatable)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="after each scenario, one more conveyor run under cProfile; print the top",
    )
    ap.add_argument("--_serve", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._serve is not None:
        serve_main(args._serve)
        return 0
    tpr = tokens_per_request()
    table = scenarios(args.quick, tpr)
    names = args.scenario or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    print(f"openai_throughput: python {sys.version.split()[0]}, {os.cpu_count()} cpu(s), "
          f"{'quick' if args.quick else 'full'} sizes; server and each client in its own "
          f"process on loopback; load average {_load()}", flush=True)  # fmt: skip
    started = time.perf_counter()
    done: dict[str, tuple[Scenario, list[Outcome], float]] = {}
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        work = Path(tmp)
        for name in names:
            sc = table[name]
            input_path = work / f"{name}.jsonl"
            expected = write_input(input_path, sc.n)
            ideal = sc.ideal(tpr)
            outcomes: list[Outcome] = []
            for row in sc.rows:
                if args.client and row.client not in args.client:
                    continue
                if row.skip:
                    outcomes.append(Outcome(row, None, {}, sc.n))
                    continue
                outcomes.append(best_of(sc, row, input_path, expected, work))
            done[name] = (sc, outcomes, ideal)
            print()
            print(render(sc, outcomes, ideal), flush=True)
            if args.profile:
                prof = work / f"{name}.prof"
                row = next(r for r in sc.rows if r.client == "conveyor")
                run_row(sc, row, input_path, expected, work, profile=prof)
                print(f"\n-- cProfile of conveyor in {name} ({row.label}) --")
                with contextlib.suppress(OSError):
                    print_profile(prof)
    found = targets(done)
    if found:
        print("\n== targets")
        for t in found:
            print(f"   {'PASS' if t.passed else 'FAIL'}  {t.text}: {t.figure}")
    print(f"\n(benchmark wall time {time.perf_counter() - started:.0f} s; "
          f"load average {_load()})")  # fmt: skip
    return 0 if all(t.passed for t in found) else 1


if __name__ == "__main__":
    sys.exit(main())
