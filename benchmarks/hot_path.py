"""The hot path: `conveyor run` against the barest aiohttp loop, in one run (issue 18).

    python benchmarks/hot_path.py [--scenario a|b|c|d|e ...] [--quick] [--repeat N]
                                  [--client bare|cli|api ...] [--cap SECONDS] [--uvloop]
                                  [--from-source] [--baseline SRC]

Every client runs in its own fresh process against the simulated server
(`conveyor.mock.MockServer`, what `conveyor mock` serves) in another process
on loopback, started afresh for each run. Clients:

- `bare`: the physical limit for a Python client here: one aiohttp session,
  a bounded window of C tasks pulling lines from the file, orjson, each answer
  written as a Batch API output line. No journal, no limits, no retries, no
  progress.
- `cli`: `conveyor run INPUT -o OUT --base-url URL -c C` as a user runs it
  (a subprocess, journal on, dedupe on, preflight on, plain progress lines on
  stderr since it is not a terminal).
- `api`: `conveyor.openai.run_file(..., journal=None)`: the same run without
  a journal (the CLI always journals).
- `base`: `cli` with conveyor imported from `--baseline SRC` (another
  checkout's `src`, e.g. a worktree of main): before and after in one run.

Clients run interleaved (bare, cli, api, then the reverse order), `--repeat`
times; medians and paired ratios to the bare run next to each are printed.
Client CPU and peak RSS come from `wait4()` of the client process (imports
and start-up included); "steady" figures come from psutil samples of the
client every 0.2 s, between 10% and 90% of the answers written; an exit is
seen within 10 ms.

conveyor's bytecode is compiled once (into the run's temporary folder) before
the clients start, as `pip install` compiles an installed package's: every
client then starts from bytecode, as aiohttp does in all of them.
`--from-source` keeps the environment's way instead (under
PYTHONDONTWRITEBYTECODE=1 every start compiles conveyor's ~250 modules again,
about 0.1 s that no installed copy pays).

Scenarios:

  a  200,000 requests at 0 ms, concurrency 100: throughput, CPU ms/request, x bare
  b  10,000 at 200 ms, concurrency 1,000: time vs bare and vs ideal N*L/C
  c  2,000 at 100 ms, concurrency 100: time incl. start-up vs bare; spawn to first request
  d  peak RSS at 0 ms for 200,000- and 2,000,000-line inputs (time-capped), RSS over time
  e  `conveyor run --help`, `import conveyor`, `conveyor demo` to its first result
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import select
import signal
import statistics
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
import psutil

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
MODEL = "mock-gpt"


# Where the clients' bytecode is cached (set by `main`): conveyor starts from compiled
# bytecode as an installed package does (pip compiles it at install time), not from
# source on every start as under PYTHONDONTWRITEBYTECODE=1. None: the environment's way.
PYCACHE: Path | None = None
# The `src` folder the `base` client imports conveyor from (`--baseline`).
BASELINE: Path | None = None


def _env(uvloop: bool = False, src: Path = SRC) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    if PYCACHE is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env["OPENAI_API_KEY"] = "bench-key"
    env.pop("OPENAI_BASE_URL", None)
    if uvloop:
        env["CONVEYOR_LOOP"] = "uvloop"
    else:
        env["CONVEYOR_LOOP"] = "asyncio"
    return env


# -- input -------------------------------------------------------------------------


def write_input(path: Path, n: int) -> None:
    """n Batch request lines, written in chunks (a 2,000,000-line file takes ~10 s)."""
    head = b'{"custom_id":"req-'
    with path.open("wb") as f:
        chunk: list[bytes] = []
        for i in range(n):
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Item {i:07d}: name one colour."}],
                "max_tokens": 16,
            }
            chunk.append(
                head
                + f"{i:07d}".encode()
                + b'","method":"POST","url":"/v1/chat/completions","body":'
                + orjson.dumps(body)
                + b"}\n"
            )
            if len(chunk) >= 10_000:
                f.write(b"".join(chunk))
                chunk.clear()
        f.write(b"".join(chunk))


# -- the server process --------------------------------------------------------------


class _FirstPost(Counter[str]):
    """`MockStats.by_path` that notes the wall time of the first POST of a request."""

    first: float | None = None

    def __setitem__(self, key: str, value: int) -> None:
        if self.first is None and key.endswith("/completions"):
            self.first = time.time()
        super().__setitem__(key, value)


def serve_main(config_json: str) -> None:
    from conveyor.mock import MockConfig, MockServer

    async def main() -> dict[str, Any]:
        server = MockServer(MockConfig(**orjson.loads(config_json)))
        url = await server.start()
        counter = _FirstPost()
        server.stats.by_path = counter
        print(url, flush=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def wait_stdin() -> None:
            sys.stdin.readline()
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=wait_stdin, daemon=True).start()
        await stop.wait()
        await server.stop()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "requests": server.stats.requests,
            "max_in_flight": server.stats.max_in_flight,
            "first_post": counter.first,
            "cpu": ru.ru_utime + ru.ru_stime,
        }

    stats = asyncio.run(main())
    sys.stdout.write(orjson.dumps(stats).decode() + "\n")
    sys.stdout.flush()


class Server:
    def __init__(self, latency: float) -> None:
        cfg = orjson.dumps({"latency": latency, "seed": 7}).decode()
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--_serve", cfg],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], 30.0)
        line = self._proc.stdout.readline().strip() if ready else ""
        if not line.startswith("http://"):
            self._proc.kill()
            self._proc.wait()
            raise RuntimeError(f"the mock server did not start (got {line!r})")
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


# -- the bare loop and the API client (run as `--_bare SPEC` / `--_api SPEC`) ----------


def bare_main(spec: dict[str, Any]) -> None:
    """The barest loop that does the job: window of C tasks, orjson, Batch output lines."""
    import aiohttp

    async def main() -> None:
        url = spec["url"] + "/chat/completions"
        headers = {"Authorization": "Bearer bench-key", "Content-Type": "application/json"}
        conc = int(spec["concurrency"])
        connector = aiohttp.TCPConnector(limit=conc)
        with open(spec["input"], "rb") as src, open(spec["output"], "wb") as out:
            lines = iter(src)
            async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

                async def worker() -> None:
                    for raw in lines:
                        req = orjson.loads(raw)
                        data = orjson.dumps(req["body"])
                        async with session.post(url, data=data) as resp:
                            body = await resp.read()
                            answer = {
                                "id": "batch_req_" + req["custom_id"],
                                "custom_id": req["custom_id"],
                                "response": {
                                    "status_code": resp.status,
                                    "request_id": resp.headers.get("x-request-id"),
                                    "body": orjson.loads(body),
                                },
                                "error": None,
                            }
                        out.write(orjson.dumps(answer, option=orjson.OPT_APPEND_NEWLINE))

                await asyncio.gather(*(worker() for _ in range(conc)))

    if spec.get("uvloop"):
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def api_main(spec: dict[str, Any]) -> None:
    from conveyor.openai import run_file

    run_file(
        spec["input"],
        output=spec["output"],
        journal=None,
        base_url=spec["url"],
        concurrency=int(spec["concurrency"]),
    )


# -- one client run, watched ------------------------------------------------------------


@dataclass
class Run:
    client: str
    wall: float  # spawn to exit
    lines: int
    cpu: float  # user + sys of the whole process (wait4)
    maxrss_mb: float
    first_post: float | None  # spawn to the server's first POST
    capped: bool
    samples: list[tuple[float, float, float, int]] = field(repr=False)  # t, cpu, rss MB, lines
    server_cpu: float | None = None
    exit_code: int = 0

    def steady(self) -> tuple[float, float]:
        """(answers/s, CPU ms/answer) between 10% and 90% of the answers written."""
        s = [x for x in self.samples if x[3] > 0]
        if len(s) < 2:
            return float("nan"), float("nan")
        last = s[-1][3]
        lo = next(x for x in s if x[3] >= 0.1 * last)
        hi = next(x for x in s if x[3] >= 0.9 * last)
        if hi is lo:
            lo, hi = s[0], s[-1]
        n = hi[3] - lo[3]
        dt = hi[0] - lo[0]
        if n <= 0 or dt <= 0:
            return float("nan"), float("nan")
        return n / dt, (hi[1] - lo[1]) / n * 1000


def _count_new(f: Any) -> int:
    data = f.read()
    return data.count(b"\n") if data else 0


def run_client(
    client: str,
    *,
    input_path: Path,
    n: int,
    latency: float,
    concurrency: int,
    work: Path,
    cap: float,
    uvloop: bool = False,
    extra_args: tuple[str, ...] = (),
) -> Run:
    output = work / f"{client}.out.jsonl"
    for p in work.glob(f"{client}.out.jsonl*"):
        p.unlink()
    server = Server(latency)
    spec = {
        "input": str(input_path),
        "output": str(output),
        "url": server.url,
        "concurrency": concurrency,
        "uvloop": uvloop,
    }
    me = str(Path(__file__).resolve())
    if client == "bare":
        cmd = [sys.executable, me, "--_bare", orjson.dumps(spec).decode()]
    elif client == "api":
        cmd = [sys.executable, me, "--_api", orjson.dumps(spec).decode()]
    else:
        cmd = [sys.executable, "-m", "conveyor.cli", "run", str(input_path), "-o", str(output),
               "--base-url", server.url, "-c", str(concurrency), *extra_args]  # fmt: skip
    src = SRC
    if client == "base":
        assert BASELINE is not None, "--client base needs --baseline SRC"
        src = BASELINE
    log = (work / f"{client}.log").open("wb")
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=_env(uvloop, src))
    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, float, float, int]] = []
    lines = 0
    capped = False
    f = None
    status = 0
    ru: Any = None
    try:
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.time() - t0
            if f is None and output.exists():
                f = output.open("rb")
            if f is not None:
                lines += _count_new(f)
            with contextlib.suppress(psutil.Error):
                ct = ps.cpu_times()
                samples.append((now, ct.user + ct.system, ps.memory_info().rss / 2**20, lines))
            if now > cap and not capped:
                capped = True
                proc.send_signal(signal.SIGINT)  # conveyor: finish in flight, flush, exit
            if capped and now > cap + 20:
                proc.kill()
            # The next sample in 0.2 s; the exit is seen within 10 ms of it.
            wake = time.time() + 0.2
            while time.time() < wake and not os.waitid(
                os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT
            ):
                time.sleep(0.01)
    finally:
        wall = time.time() - t0
        if proc.returncode is None and ru is None:
            proc.kill()
            _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        stats = server.stop()
    if f is None and output.exists():
        f = output.open("rb")
    if f is not None:
        lines += _count_new(f)
        f.close()
    first = stats.get("first_post")
    return Run(
        client=client,
        wall=wall,
        lines=lines,
        cpu=ru.ru_utime + ru.ru_stime,
        maxrss_mb=ru.ru_maxrss / 1024,
        first_post=None if first is None else first - t0,
        capped=capped,
        samples=samples,
        server_cpu=stats.get("cpu"),
        exit_code=proc.returncode,
    )


def interleaved(clients: list[str], repeat: int, **kw: Any) -> list[list[Run]]:
    """`repeat` rounds; each round runs every client, alternating the order."""
    rounds: list[list[Run]] = []
    for i in range(repeat):
        order = clients if i % 2 == 0 else clients[::-1]
        runs = {c: run_client(c, **kw) for c in order}
        rounds.append([runs[c] for c in clients])
        for r in rounds[-1]:
            flag = " capped" if r.capped else ""
            rate, cpu = r.steady()
            print(f"   round {i + 1} {r.client:5s} wall {r.wall:6.2f}s  lines {r.lines:>8}  "
                  f"steady {rate:7.0f}/s {cpu:.3f} ms CPU/req  exit {r.exit_code}{flag}",
                  flush=True)  # fmt: skip
    return rounds


def _med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def _paired(rounds: list[list[Run]], idx: int, fn: Any) -> float:
    """Median over rounds of fn(run) / fn(bare run of the same round)."""
    return _med([fn(r[idx]) / fn(r[0]) for r in rounds])


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]

    def fmt(cells: list[str]) -> str:
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([cells[0].ljust(widths[0]), *rest])

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)])


# -- scenarios ---------------------------------------------------------------------------


@dataclass
class Ctx:
    quick: bool
    repeat: int
    clients: list[str]
    cap: float | None
    uvloop: bool
    work: Path
    verdicts: list[tuple[str, bool, str]] = field(default_factory=list)

    def target(self, text: str, ok: bool, figure: str) -> None:
        self.verdicts.append((text, ok, figure))


def scenario_a(ctx: Ctx) -> None:
    n = 20_000 if ctx.quick else 200_000
    print(f"\n== a: {n:,} requests at 0 ms, concurrency 100 (throughput, client CPU)", flush=True)
    inp = ctx.work / "a.jsonl"
    write_input(inp, n)
    rounds = interleaved(ctx.clients, ctx.repeat, input_path=inp, n=n, latency=0.0,
                         concurrency=100, work=ctx.work, cap=ctx.cap or 240.0,
                         uvloop=ctx.uvloop)  # fmt: skip
    rows = []
    for i, c in enumerate(ctx.clients):
        runs = [r[i] for r in rounds]
        rate = _med([r.steady()[0] for r in runs])
        cpu_s = _med([r.steady()[1] for r in runs])
        cpu_t = _med([r.cpu / max(1, r.lines) * 1000 for r in runs])
        ratio = _paired(rounds, i, lambda r: r.steady()[0])
        rows.append([c, f"{_med([r.wall for r in runs]):.2f}", f"{rate:,.0f}", f"{ratio:.2f}",
                     f"{cpu_s:.3f}", f"{cpu_t:.3f}", f"{_med([r.maxrss_mb for r in runs]):.0f}",
                     str(min(r.lines for r in runs))])  # fmt: skip
        if c == "cli":
            ctx.target("a: cli throughput >= 0.8x bare", ratio >= 0.8, f"{ratio:.2f}x")
            ctx.target("a: cli >= 3,500 req/s", rate >= 3500, f"{rate:,.0f}/s")
            ctx.target("a: cli <= 0.3 ms client CPU/request (steady)", cpu_s <= 0.3,
                       f"{cpu_s:.3f} ms (whole process {cpu_t:.3f})")  # fmt: skip
    print(_table(["client", "wall s", "steady req/s", "x bare", "CPU ms/req steady",
                  "CPU ms/req total", "peak RSS MB", "answers"], rows))  # fmt: skip


def scenario_timed(ctx: Ctx, name: str, n: int, latency: float, conc: int) -> list[list[Run]]:
    ideal = n * latency / conc
    print(f"\n== {name}: {n:,} requests at {latency * 1000:.0f} ms, concurrency {conc:,} "
          f"(ideal N*L/C = {ideal:.2f} s)", flush=True)  # fmt: skip
    inp = ctx.work / f"{name}.jsonl"
    write_input(inp, n)
    rounds = interleaved(ctx.clients, ctx.repeat, input_path=inp, n=n, latency=latency,
                         concurrency=conc, work=ctx.work, cap=ctx.cap or 120.0,
                         uvloop=ctx.uvloop)  # fmt: skip
    rows = []
    for i, c in enumerate(ctx.clients):
        runs = [r[i] for r in rounds]
        wall = _med([r.wall for r in runs])
        first = _med([r.first_post or float("nan") for r in runs])
        run_t = _med([r.wall - (r.first_post or 0.0) for r in runs])
        rows.append(
            [
                c,
                f"{wall:.2f}",
                f"{_paired(rounds, i, lambda r: r.wall):.2f}",
                f"{first:.2f}",
                f"{run_t:.2f}",
                f"{run_t / ideal:.2f}",
                f"{_med([r.cpu / max(1, r.lines) * 1000 for r in runs]):.3f}",
                f"{_med([r.maxrss_mb for r in runs]):.0f}",
                str(min(r.lines for r in runs)),
            ]
        )
    head = ["client", "wall s (spawn-exit)", "x bare", "spawn->1st req s", "1st req->exit s",
            "x ideal", "CPU ms/req", "peak RSS MB", "answers"]  # fmt: skip
    print(_table(head, rows))
    return rounds


def scenario_b(ctx: Ctx) -> None:
    n = 5_000 if ctx.quick else 10_000
    rounds = scenario_timed(ctx, "b", n, 0.2, 1000)
    if "cli" in ctx.clients and ctx.clients[0] == "bare":
        i = ctx.clients.index("cli")
        ratio = _paired(rounds, i, lambda r: r.wall)
        ctx.target("b: cli time <= 1.2x bare (start-up included)", ratio <= 1.2, f"{ratio:.2f}x")


def scenario_c(ctx: Ctx) -> None:
    n = 1_000 if ctx.quick else 2_000
    rounds = scenario_timed(ctx, "c", n, 0.1, 100)
    if "cli" in ctx.clients and ctx.clients[0] == "bare":
        i = ctx.clients.index("cli")
        ratio = _paired(rounds, i, lambda r: r.wall)
        ctx.target("c: cli time <= 1.1x bare (start-up included)", ratio <= 1.1, f"{ratio:.2f}x")
        first = _med([r[i].first_post or float("nan") for r in rounds])
        bare_first = _med([r[0].first_post or float("nan") for r in rounds])
        ctx.target("c: cli spawn to first request (bare's for reference)", True,
                   f"{first:.2f} s (bare {bare_first:.2f} s)")  # fmt: skip


def scenario_d(ctx: Ctx) -> None:
    sizes = (20_000, 200_000) if ctx.quick else (200_000, 2_000_000)
    cap = ctx.cap or (15.0 if ctx.quick else 45.0)
    print(f"\n== d: peak RSS at 0 ms, concurrency 100, inputs of {sizes[0]:,} and "
          f"{sizes[1]:,} lines, each run capped at {cap:g} s", flush=True)  # fmt: skip
    peaks: dict[tuple[str, int], float] = {}
    for size in sizes:
        inp = ctx.work / f"d{size}.jsonl"
        write_input(inp, size)
        for c in [c for c in ctx.clients if c != "api"]:
            r = run_client(c, input_path=inp, n=size, latency=0.0, concurrency=100,
                           work=ctx.work, cap=cap, uvloop=ctx.uvloop)  # fmt: skip
            peaks[(c, size)] = r.maxrss_mb
            step = max(1, len(r.samples) // 12)
            over = [f"{t:.0f}s:{rss:.0f}" for t, _, rss, _ in r.samples[::step]]
            print(f"   {c:5s} {size:>9,} lines: peak RSS {r.maxrss_mb:.0f} MB, "
                  f"{r.lines:,} answered in {r.wall:.1f} s{' (capped)' if r.capped else ''}; "
                  "RSS MB over time "
                  + " ".join(over), flush=True)  # fmt: skip
        inp.unlink()
    if ("cli", sizes[1]) in peaks:
        big, small = peaks[("cli", sizes[1])], peaks[("cli", sizes[0])]
        ctx.target(f"d: cli peak RSS <= 100 MB at {sizes[1]:,} lines", big <= 100, f"{big:.0f} MB")
        ctx.target(f"d: cli peak RSS at {sizes[1]:,} within 10% of {sizes[0]:,}",
                   big <= 1.1 * small, f"{big:.0f} vs {small:.0f} MB")  # fmt: skip


def _timed(cmd: list[str], times: int) -> float:
    walls = []
    for _ in range(times):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=_env(), capture_output=True, check=True)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def scenario_e(ctx: Ctx) -> None:
    print("\n== e: start-up (median of 5)", flush=True)
    py = sys.executable
    bare_py = _timed([py, "-c", "pass"], 5)
    imp = _timed([py, "-c", "import conveyor"], 5)
    imp_aio = _timed([py, "-c", "import aiohttp, orjson"], 5)
    helps = _timed([py, "-m", "conveyor.cli", "run", "--help"], 5)
    firsts = []
    for _ in range(3):
        d = Path(tempfile.mkdtemp(dir=ctx.work))
        out = d / "results.jsonl"
        t0 = time.perf_counter()
        proc = subprocess.Popen([py, "-m", "conveyor.cli", "demo", "-n", "300", "--dir", str(d),
                                 "-q"], env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        first = float("nan")
        deadline = t0 + 60
        while time.perf_counter() < deadline:
            if out.exists() and out.stat().st_size > 0:
                first = time.perf_counter() - t0
                break
            if proc.poll() is not None:
                break
            time.sleep(0.005)
        proc.wait()
        firsts.append(first)
    demo = _med(firsts)
    print(f"   python -c pass               {bare_py:.3f} s")
    print(f"   import aiohttp, orjson       {imp_aio:.3f} s")
    print(f"   import conveyor              {imp:.3f} s")
    print(f"   conveyor run --help          {helps:.3f} s")
    print(f"   conveyor demo: first result  {demo:.3f} s (spawn to the first output line)")


SCENARIOS = {"a": scenario_a, "b": scenario_b, "c": scenario_c, "d": scenario_d, "e": scenario_e}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    ap.add_argument("--quick", action="store_true", help="a tenth to a half of the sizes")
    ap.add_argument("--repeat", type=int, default=2, help="rounds of each client (default 2)")
    ap.add_argument("--client", action="append", choices=["bare", "cli", "api", "base"])
    ap.add_argument("--baseline", type=Path, help="the `src` folder the `base` client runs")
    ap.add_argument("--cap", type=float, help="seconds before a run is stopped (Ctrl+C)")
    ap.add_argument("--uvloop", action="store_true", help="clients run on uvloop")
    ap.add_argument("--from-source", action="store_true",
                    help="clients compile conveyor from source at each start (no bytecode "
                    "cache), as under PYTHONDONTWRITEBYTECODE=1")  # fmt: skip
    ap.add_argument("--_serve", help=argparse.SUPPRESS)
    ap.add_argument("--_bare", help=argparse.SUPPRESS)
    ap.add_argument("--_api", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._serve is not None:
        serve_main(args._serve)
        return 0
    if args._bare is not None:
        with contextlib.suppress(KeyboardInterrupt):
            bare_main(orjson.loads(args._bare))
        return 0
    if args._api is not None:
        with contextlib.suppress(KeyboardInterrupt):
            api_main(orjson.loads(args._api))
        return 0
    global PYCACHE, BASELINE
    clients = args.client or ["bare", "cli", "api"]
    if args.baseline is not None:
        BASELINE = args.baseline.resolve()
        if "base" not in clients:
            clients = [*clients, "base"]
    elif "base" in clients:
        ap.error("--client base needs --baseline SRC")
    if "bare" in clients:
        clients = ["bare", *[c for c in clients if c != "bare"]]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"hot_path: python {sys.version.split()[0]}, {os.cpu_count()} cpu(s), "
          f"{'quick' if args.quick else 'full'} sizes, {args.repeat} round(s), clients "
          f"{', '.join(clients)}{', uvloop' if args.uvloop else ''}"
          f"{', from source' if args.from_source else ', bytecode cached'}; load average {load}",
          flush=True)  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(
        prefix="conveyor-hot-", dir=os.environ.get("BENCH_TMP")
    ) as tmp:
        ctx = Ctx(args.quick, args.repeat, clients, args.cap, args.uvloop, Path(tmp))
        if not args.from_source:
            PYCACHE = Path(tmp) / "pycache"
            for src in (SRC, *([BASELINE] if BASELINE else [])):
                subprocess.run([sys.executable, "-m", "compileall", "-q", str(src / "conveyor")],
                               env=_env(src=src), check=True,
                               stdout=subprocess.DEVNULL)  # fmt: skip
        for name in args.scenario or list(SCENARIOS):
            SCENARIOS[name](ctx)
    if ctx.verdicts:
        print("\n== targets (issue 18)")
        for text, ok, figure in ctx.verdicts:
            print(f"   {'PASS' if ok else 'FAIL'}  {text}: {figure}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n(benchmark wall time {time.perf_counter() - started:.0f} s; load average {load})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
