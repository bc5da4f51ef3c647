"""`conveyor report` and `conveyor doctor` as real subprocesses, the preflight step
for `conveyor run`, and the secrets invariant: the API key used in a run appears in
no log line, journal byte, report (text, JSON, HTML) or doctor output."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest

import conveyor
from conveyor._base._types import ErrorInfo, Result, Status, Usage
from conveyor._journal._journal import Journal
from conveyor._render._extras import render_text
from conveyor._render._html import CHART_IDS, write_html
from conveyor._render._journal import load_journal_report
from conveyor.cli._common import JsonFormatter
from conveyor.cli._observe import PreflightFailed, run_preflight
from conveyor.mock import MockConfig, MockServer

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

CONVEYOR = [sys.executable, "-c", "from conveyor.cli import main; main()"]
T0 = 1_700_000_000.0


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    full_env.update(env or {})
    return subprocess.run(
        [*CONVEYOR, *args], capture_output=True, text=True, timeout=60, env=full_env, check=False
    )


def assert_no_secret(paths_or_texts: Iterable[Path | str | bytes], secret: str) -> None:
    """Fail if `secret` occurs in any text, or in any file's bytes (SQLite's -wal and
    -shm companions included). Also checks the secret without its well-known prefix,
    so a truncated or re-prefixed copy is caught too."""
    needles = {secret.encode()}
    if "-" in secret:
        needles.add(secret.split("-", 2)[-1].encode())
    checked = 0
    for item in paths_or_texts:
        blobs: list[tuple[str, bytes]] = []
        if isinstance(item, Path):
            for p in (item, Path(f"{item}-wal"), Path(f"{item}-shm")):
                if p.exists():
                    blobs.append((str(p), p.read_bytes()))
            assert blobs, f"{item} does not exist: nothing was scanned"
        elif isinstance(item, bytes):
            blobs.append(("<bytes>", item))
        else:
            blobs.append(("<text>", item.encode()))
        for where, data in blobs:
            checked += 1
            for needle in needles:
                assert needle not in data, f"the API key leaked into {where}"
    assert checked, "nothing to scan"


def sample_journal(path: Path) -> Path:
    results = [
        Result(
            index=i,
            key=f"req-{i}",
            status=Status.OK if i % 5 else Status.FAILED,
            value={"n": i} if i % 5 else None,
            error=None if i % 5 else ErrorInfo("RateLimitError", "slow down", status_code=429),
            attempts=1 + (i % 3),
            started_at=T0 + i * 0.1,
            ended_at=T0 + i * 0.1 + 0.5 + i % 4,
            duration=0.5 + i % 4,
            usage=Usage(30, 20),
        )
        for i in range(20)
    ]
    with Journal.open(path, identity={"input": "cli-test", "model": "gpt-4o-mini"}) as j:
        j.record([(r, None, None) for r in results], meta={"batch_id": "batch_cli_test"})
    return path


# -- conveyor report ------------------------------------------------------------------


def test_report_prints_the_text_summary(tmp_path: Path) -> None:
    """`conveyor report JOURNAL` prints totals, latency, cost, errors and slowest items."""
    j = sample_journal(tmp_path / "run.db")
    out = cli("report", str(j))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("batch batch_cli_test: 20 items in ")
    for words in (
        "ok 16  failed 4",
        "latency p50",
        "tokens in 600  out 400",
        "est. cost $",
        "(gpt-4o-mini)",
        "error distribution:",
        "RateLimitError",
        "slowest items:",
    ):
        assert words in text, words
    assert "\x1b" not in text


def test_report_json_follows_the_batch_response_shape(tmp_path: Path) -> None:
    """`--json` is one JSON document with seed 002's batch fields and the extra
    sections; `--results` adds each item's result."""
    j = sample_journal(tmp_path / "run.db")
    out = cli("report", str(j), "--json")
    assert out.returncode == 0, out.stderr
    doc = orjson.loads(out.stdout)
    assert doc["batch_id"] == "batch_cli_test"
    assert (doc["total_items"], doc["successful"], doc["failed"]) == (20, 16, 4)
    assert doc["total_duration_seconds"] == pytest.approx(
        max(i * 0.1 + 0.5 + i % 4 for i in range(20)), abs=1e-6
    )
    assert "avg_duration_per_item" in doc and "results" not in doc
    assert set(doc["extra"]) >= {"slowest", "cache", "cost", "achieved_rate"}
    with_results = orjson.loads(cli("report", str(j), "--json", "--results").stdout)
    assert [r["key"] for r in with_results["results"]] == [f"req-{i}" for i in range(20)]


def test_report_html_writes_the_page_and_keeps_stdout_clean(tmp_path: Path) -> None:
    """`--html FILE` writes the page (said on stderr) while `--json` stdout stays JSON;
    `--prices` and `--model` change the cost."""
    j = sample_journal(tmp_path / "run.db")
    prices = tmp_path / "prices.json"
    prices.write_text('{"house-model": {"input": 1000, "output": 1000}}')
    page = tmp_path / "report.html"
    out = cli(
        "report",
        str(j),
        "--json",
        "--html",
        str(page),
        "--prices",
        str(prices),
        "--model",
        "house-model",
    )
    assert out.returncode == 0, out.stderr
    doc = orjson.loads(out.stdout)
    assert doc["extra"]["cost"]["total"] == pytest.approx(1.0)  # 1000 tokens at $1000/M
    assert f"wrote {page}" in out.stderr
    html = page.read_text()
    assert all(f'id="{cid}"' in html for cid in CHART_IDS)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["report", "{tmp}/missing.db"], "no journal at"),
        (["report", "{tmp}/run.db", "--prices", "{tmp}/bad.json"], "not valid JSON"),
        (["report", "{tmp}/run.db", "--html", "{tmp}/no/such/dir/r.html"], "cannot write"),
        (["report", "{tmp}/notajournal.db"], "not a conveyor journal"),
    ],
)
def test_report_errors_exit_2_with_what_to_do(tmp_path: Path, args: list[str], words: str) -> None:
    """A missing or foreign journal, a broken prices file or an unwritable --html path
    exits 2 with one clear line, no traceback."""
    sample_journal(tmp_path / "run.db")
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "notajournal.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    out = cli(*[a.format(tmp=tmp_path) for a in args])
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert words in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.startswith("conveyor: ")


# -- conveyor doctor ------------------------------------------------------------------


@pytest.fixture
def mock_url(start_mock: Callable[..., MockServer]) -> tuple[str, str]:
    key = "sk-test-" + secrets.token_hex(16)
    return start_mock(api_key=key).base_url, key


def test_doctor_ok_exits_0(mock_url: tuple[str, str], tmp_path: Path) -> None:
    """Every check passes against a healthy endpoint: the table says ready, exit 0,
    and the key never appears."""
    url, key = mock_url
    out = cli(
        "doctor",
        "--base-url",
        url,
        "--model",
        "gpt-4o",
        "--journal",
        str(tmp_path / "j.db"),
        "--min-free-memory",
        "0",
        env={"OPENAI_API_KEY": key},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].startswith("ready: 0 failed")
    assert "ok    model" in out.stdout
    assert_no_secret([out.stdout, out.stderr], key)


def test_doctor_reads_the_endpoint_and_key_from_the_environment(
    mock_url: tuple[str, str],
) -> None:
    """OPENAI_BASE_URL sets the endpoint; --api-key-env names another key variable;
    --json is machine-readable; a refused key exits 2."""
    url, key = mock_url
    env = {"OPENAI_BASE_URL": url, "TEAM_KEY": key, "OPENAI_API_KEY": "sk-wrong-000000000000"}
    good = cli("doctor", "--api-key-env", "TEAM_KEY", "--json", "--min-free-memory", "0", env=env)
    doc = orjson.loads(good.stdout)
    assert good.returncode == 0 and doc["ok"] is True
    assert {c["name"]: c["status"] for c in doc["checks"]}["api key"] == "ok"
    bad = cli("doctor", "--min-free-memory", "0", env=env)
    assert bad.returncode == 2
    assert "FAIL  api key" in bad.stdout and "OPENAI_API_KEY" in bad.stdout
    assert_no_secret([good.stdout, bad.stdout, bad.stderr], key)
    assert "sk-wrong-000000000000" not in bad.stdout


def test_doctor_unreachable_exits_2_and_says_what_to_do() -> None:
    """A closed port fails with 'is the server running?' and exit code 2."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = cli("doctor", "--base-url", f"http://127.0.0.1:{port}/v1", "--min-free-memory", "0")
    assert out.returncode == 2
    assert "FAIL  endpoint" in out.stdout and "is the server running?" in out.stdout


def test_run_preflight_raises_with_the_fixes(
    mock_url: tuple[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check before `conveyor run` raises PreflightFailed (exit 2 via cli_errors)
    naming each failed check, its fix and --no-preflight; passes quietly when healthy."""
    url, key = mock_url
    monkeypatch.setenv("OPENAI_API_KEY", key)
    checks = run_preflight(base_url=url, model="mock-gpt", min_free_memory_mb=0, quiet=True)
    assert all(c.status != "fail" for c in checks)
    assert capsys.readouterr().err == ""
    with pytest.raises(PreflightFailed) as info:
        run_preflight(base_url=url, model="nope-model", min_free_memory_mb=0)
    msg = str(info.value)
    assert "model: nope-model is not among" in msg and "--no-preflight" in msg
    assert "FAIL  model" in capsys.readouterr().err
    assert key not in msg


# -- secrets --------------------------------------------------------------------------


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(ln) for ln in path.read_text().splitlines()]


@pytest.fixture
def json_log(tmp_path: Path) -> Iterator[Path]:
    """Capture conveyor's logs as `--log-json` writes them (one JSON object a line)."""
    path = tmp_path / "log.jsonl"
    logger = logging.getLogger("conveyor")
    old = (list(logger.handlers), logger.level, logger.propagate)
    with path.open("w") as f:
        handler = logging.StreamHandler(f)
        handler.setFormatter(JsonFormatter())
        logger.handlers[:] = [handler]
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        try:
            yield path
        finally:
            handler.flush()
            logger.handlers[:], logger.level, logger.propagate = old


async def test_the_key_appears_nowhere(tmp_path: Path, json_log: Path) -> None:
    """A batch sent with a real key over HTTP, with retries and failures: the key is in
    no log line, journal byte, text/JSON/HTML report, nor `conveyor report`/`doctor`
    output. Failed items are logged with their key and error type."""
    key = "sk-test-" + secrets.token_hex(20)
    cfg = MockConfig(api_key=key, rate_500=0.25, seed=7)
    async with MockServer(cfg) as srv, aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {key}"}

        async def call(i: int) -> Any:
            if i % 7 == 3:
                raise ValueError(f"item {i} is malformed")
            body = {"model": "mock-gpt", "messages": [{"role": "user", "content": f"q{i}"}]}
            async with session.post(
                f"{srv.base_url}/chat/completions", json=body, headers=headers
            ) as resp:
                data = await resp.json(content_type=None)
                if resp.status >= 500:
                    raise conveyor.RetryableError(f"HTTP {resp.status}", status_code=resp.status)
                usage = data["usage"]
                conveyor.report_usage(usage["prompt_tokens"], usage["completion_tokens"])
                return data["choices"][0]["message"]["content"]

        report = await conveyor.arun(
            range(40), call, concurrency=8, retries=1, key=lambda i: f"item-{i}"
        )
        assert report.failed > 0 and report.successful > 0 and report.retries > 0

        journal = tmp_path / "run.db"
        with Journal.open(
            journal,
            identity={"input": "secrets", "model": "mock-gpt", "api_key_env": "OPENAI_API_KEY"},
        ) as j:
            j.record(
                [(r, orjson.dumps(r.to_dict()), r.index + 1) for r in report.results],
                meta={"batch_id": report.batch_id},
            )

        loaded = load_journal_report(journal, keep_results=True)
        page = write_html(tmp_path / "report.html", loaded.report, loaded.timeline)
        text = render_text(loaded.report)
        as_json = loaded.report.to_json(include_results=True)
        stream_out = io.StringIO()
        for r in report.failures():
            assert r.error is not None
            stream_out.write(r.error.message + r.error.traceback)
        # In a thread: the mock server answers on this event loop meanwhile.
        report_cli = await asyncio.to_thread(cli, "report", str(journal), "--json", "--results")
        doctor = await asyncio.to_thread(
            cli,
            "doctor",
            "--base-url",
            srv.base_url,
            "--min-free-memory",
            "0",
            env={"OPENAI_API_KEY": key},
        )
        assert report_cli.returncode == 0 and doctor.returncode == 0, doctor.stdout

    logging.getLogger("conveyor").handlers[0].flush()
    lines = read_json_lines(json_log)
    failed_logs = [ln for ln in lines if ln.get("status") in ("failed", "timed_out")]
    assert len(failed_logs) == report.failed
    assert all(ln["key"].startswith("item-") for ln in failed_logs)
    assert any("ValueError: item 3 is malformed" in ln["message"] for ln in failed_logs)
    assert_no_secret(
        [
            json_log,
            journal,
            page,
            text,
            as_json,
            stream_out.getvalue(),
            report_cli.stdout,
            report_cli.stderr,
            doctor.stdout,
            doctor.stderr,
        ],
        key,
    )
