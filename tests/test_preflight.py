"""Preflight checks (`conveyor.cli._preflight`): endpoint, key and model against the
simulated server on loopback, a closed port and a silent server; journal folder,
disk and memory floors; GPU through real `nvidia-smi`-shaped executables."""

from __future__ import annotations

import asyncio
import inspect
import socket
import stat
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.cli._preflight import (
    Check,
    format_checks,
    has_failures,
    parse_meminfo,
    parse_nvidia_smi,
    preflight,
    redact_url,
)
from conveyor.mock import MockServer

if TYPE_CHECKING:
    from pathlib import Path

KEY = "sk-test-preflight-0123456789abcdef"
NO_GPU = "conveyor-test-no-such-nvidia-smi"


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def assert_key_absent(checks: list[Check]) -> None:
    for c in checks:
        assert KEY not in c.detail and KEY not in c.fix
    assert KEY not in format_checks(checks)


@pytest.fixture
def server(start_mock: Callable[..., MockServer]) -> MockServer:
    return start_mock(api_key=KEY, models=("mock-gpt", "gpt-4o-mini"))


async def check(base_url: str, **kw: object) -> list[Check]:
    kw.setdefault("api_key", KEY)
    kw.setdefault("nvidia_smi", NO_GPU)
    kw.setdefault("min_free_memory_mb", 0)
    kw.setdefault("min_free_disk_mb", 0)
    return await preflight(base_url=base_url, **kw)  # type: ignore[arg-type]


async def test_all_good_against_the_simulated_server(server: MockServer, tmp_path: Path) -> None:
    """Reachable endpoint, accepted key, listed model, writable journal folder: no
    failure, and every check is named in a fixed order."""
    checks = await check(server.base_url, model="mock-gpt", journal_path=tmp_path / "run.db")
    c = by_name(checks)
    assert [x.name for x in checks] == [
        "endpoint",
        "api key",
        "model",
        "proxy",
        "journal",
        "disk",
        "memory",
        "gpu",
    ]
    assert c["endpoint"].status == "ok" and "HTTP 200" in c["endpoint"].detail
    assert c["api key"].status == "ok" and "OPENAI_API_KEY" in c["api key"].detail
    assert c["model"].status == "ok" and "mock-gpt" in c["model"].detail
    assert c["journal"].status == "ok" and "will be created" in c["journal"].detail
    assert c["proxy"].status == "ok" and "connects directly" in c["proxy"].detail
    assert c["gpu"].status == "skip" and "nvidia-smi not found" in c["gpu"].detail
    assert not has_failures(checks)
    assert format_checks(checks).endswith("ready: 0 failed, 0 warning(s)")
    assert_key_absent(checks)


async def test_refused_key_fails_and_says_which_variable(server: MockServer) -> None:
    """A wrong key fails the key check (HTTP 401) with advice naming the variable; the
    key itself is never shown; the model check is skipped."""
    wrong = "sk-wrong-key-000000000000000"
    checks = await check(server.base_url, api_key=wrong, api_key_env="MY_KEY", model="mock-gpt")
    c = by_name(checks)
    assert c["endpoint"].status == "ok"
    assert c["api key"].status == "fail" and "HTTP 401" in c["api key"].detail
    assert "MY_KEY" in c["api key"].fix
    assert c["model"].status == "skip"
    assert has_failures(checks)
    assert all(wrong not in x.detail + x.fix for x in checks)


async def test_missing_key_when_the_server_needs_one(server: MockServer) -> None:
    """No key at all, and the endpoint wants one: the fix says to export it."""
    c = by_name(await check(server.base_url, api_key=None))
    assert c["api key"].status == "fail" and "no key set" in c["api key"].detail
    assert c["api key"].fix.startswith("export OPENAI_API_KEY=")


async def test_no_key_needed_by_a_local_server(start_mock: Callable[..., MockServer]) -> None:
    """A local server (vLLM, Ollama) without auth: the key check is skipped, not failed."""
    srv = start_mock(api_key=None)
    checks = await check(srv.base_url, api_key=None, model="gpt-4o")
    c = by_name(checks)
    assert c["api key"].status == "skip" and c["model"].status == "ok"
    assert not has_failures(checks)


async def test_unknown_model_lists_what_is_served(server: MockServer) -> None:
    """A model the endpoint does not list fails, naming a few that are."""
    c = by_name(await check(server.base_url, model="gpt-5-imaginary"))["model"]
    assert c.status == "fail"
    assert "mock-gpt" in c.detail and "gpt-4o-mini" in c.detail
    assert "--model" in c.fix


async def test_no_model_given_lists_the_models(server: MockServer) -> None:
    """Without --model the model check is skipped and shows what the endpoint serves."""
    c = by_name(await check(server.base_url))["model"]
    assert c.status == "skip" and "2 served: mock-gpt, gpt-4o-mini" in c.detail


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_endpoint_says_is_the_server_running() -> None:
    """A closed port fails the endpoint check with the advice to check the server and
    --base-url; key and model checks are skipped, not failed twice."""
    checks = await check(f"http://127.0.0.1:{closed_port()}/v1", model="mock-gpt")
    c = by_name(checks)
    assert c["endpoint"].status == "fail"
    assert "cannot reach http://127.0.0.1:" in c["endpoint"].detail
    assert "refused" in c["endpoint"].detail.lower()
    assert "is the server running?" in c["endpoint"].fix
    assert "OPENAI_BASE_URL" in c["endpoint"].fix
    assert c["api key"].status == "skip" and c["model"].status == "skip"
    assert_key_absent(checks)


async def test_silent_server_times_out() -> None:
    """A server that accepts but never answers fails within the probe timeout."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(w)

    srv = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        c = by_name(await check(f"http://127.0.0.1:{port}/v1", timeout=0.3))["endpoint"]
        assert loop.time() - t0 < 5
    finally:
        for w in accepted:
            w.close()
        srv.close()
        await srv.wait_closed()
    assert c.status == "fail" and "no answer within 0.3 s" in c.detail
    assert "--timeout" in c.fix


async def test_base_url_without_v1_gets_a_hint(server: MockServer) -> None:
    """GET /models answering 404 warns and asks whether --base-url ends in /v1."""
    base = server.base_url.removesuffix("/v1")
    c = by_name(await check(base))["endpoint"]
    assert c.status == "warn" and "404" in c.detail and "/v1" in c.fix


async def test_credentials_in_the_url_are_never_shown() -> None:
    """user:password and query strings in --base-url are dropped from every message."""
    port = closed_port()
    for base in (
        f"http://bob:hunter2secret@127.0.0.1:{port}/v1",
        f"http://127.0.0.1:{port}/v1?key=hunter2secret",
    ):
        for api_key in (None, KEY):
            text = format_checks(await check(base, api_key=api_key))
            assert "hunter2secret" not in text and "bob" not in text
            assert f"http://127.0.0.1:{port}/v1/models" in text
            assert KEY not in text


@given(
    st.text("abcdefghijklmnop0123456789", min_size=3, max_size=12),
    st.text("abcdefghijklmnop0123456789", min_size=8, max_size=20),
)
def test_redact_url_drops_userinfo_and_query(user: str, secret: str) -> None:
    """Whatever the credentials, the redacted URL keeps scheme, host, port and path only."""
    url = f"https://{user}:{secret}@api.example.com:8443/v1?api_key={secret}"
    assert redact_url(url) == "https://api.example.com:8443/v1"


async def test_journal_folder_missing_or_unwritable(tmp_path: Path) -> None:
    """A journal whose folder does not exist, or cannot be written, fails with what to
    do; an existing journal is reported as resumed."""
    base = f"http://127.0.0.1:{closed_port()}/v1"
    missing = by_name(await check(base, journal_path=tmp_path / "no" / "j.db"))["journal"]
    assert missing.status == "fail" and "does not exist" in missing.detail
    assert f"mkdir -p {tmp_path / 'no'}" in missing.fix
    # /proc/self accepts no new files, whoever runs the test (root included).
    ro = by_name(await check(base, journal_path="/proc/self/run.db"))["journal"]
    assert ro.status == "fail" and "cannot write in /proc/self" in ro.detail
    assert "--journal" in ro.fix
    existing = tmp_path / "old.db"
    existing.write_bytes(b"")
    ok = by_name(await check(base, journal_path=existing))["journal"]
    assert ok.status == "ok" and "resume" in ok.detail


async def test_disk_and_memory_floors_refuse_to_start(tmp_path: Path) -> None:
    """Floors above what the machine has fail, each saying which option lowers it;
    floors of 0 pass."""
    base = f"http://127.0.0.1:{closed_port()}/v1"
    huge = 1e12
    c = by_name(
        await check(
            base, journal_path=tmp_path / "j.db", min_free_disk_mb=huge, min_free_memory_mb=huge
        )
    )
    assert c["disk"].status == "fail" and "--min-free-disk" in c["disk"].fix
    assert str(tmp_path) in c["disk"].detail
    assert c["memory"].status == "fail" and "--min-free-memory" in c["memory"].fix
    assert "MB available of" in c["memory"].detail
    c = by_name(await check(base, journal_path=tmp_path / "j.db"))
    assert c["disk"].status == "ok" and c["memory"].status == "ok"


def fake_nvidia_smi(tmp_path: Path, body: str) -> str:
    """An executable standing in for nvidia-smi: a real process with its own output."""
    exe = tmp_path / "nvidia-smi"
    exe.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe)


async def test_gpu_memory_above_the_warning_level(tmp_path: Path) -> None:
    """Each GPU is checked: one at 96% memory warns (with what to do), one at 50% is ok.
    The query asks for the documented fields in CSV without units."""
    exe = fake_nvidia_smi(
        tmp_path,
        "assert '--format=csv,noheader,nounits' in sys.argv, sys.argv\n"
        "print('0, Tesla T4, 45, 5898, 6144')\nprint('1, Tesla T4, 10, 3072, 6144')",
    )
    checks = await check(f"http://127.0.0.1:{closed_port()}/v1", nvidia_smi=exe)
    c = by_name(checks)
    assert c["gpu 0"].status == "warn" and "96.0%" in c["gpu 0"].detail
    assert "--gpu-memory-warn" in c["gpu 0"].fix
    assert c["gpu 1"].status == "ok" and "utilisation 10%" in c["gpu 1"].detail
    relaxed = await check(
        f"http://127.0.0.1:{closed_port()}/v1", nvidia_smi=exe, gpu_memory_warn=0.99
    )
    assert by_name(relaxed)["gpu 0"].status == "ok"


async def test_gpu_tool_failing_or_hanging_warns(tmp_path: Path) -> None:
    """nvidia-smi that exits non-zero or hangs past the timeout warns; never fails the
    run or hangs the check."""
    base = f"http://127.0.0.1:{closed_port()}/v1"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    broken = fake_nvidia_smi(
        tmp_path / "a", "print('NVIDIA-SMI has failed: no driver', file=sys.stderr); sys.exit(9)"
    )
    c = by_name(await check(base, nvidia_smi=broken))["gpu"]
    assert c.status == "warn" and "exited 9: NVIDIA-SMI has failed" in c.detail
    hung = fake_nvidia_smi(tmp_path / "b", "time.sleep(60)")
    c = by_name(await check(base, nvidia_smi=hung, timeout=0.5))["gpu"]
    assert c.status == "warn" and "no answer within 0.5 s" in c.detail


def test_parse_nvidia_smi_skips_unreadable_lines() -> None:
    """Lines with N/A fields or the wrong shape are skipped, others parsed."""
    gpus = parse_nvidia_smi("0, A100, 12, 100, 40960\n1, A100, [N/A], 1, 2\ngarbage\n")
    assert [(g.index, g.name, g.utilization, g.used_mb, g.total_mb) for g in gpus] == [
        ("0", "A100", 12.0, 100.0, 40960.0)
    ]


@given(st.integers(0, 2**40), st.integers(0, 2**40))
def test_parse_meminfo_reads_available_and_total(avail_kb: int, total_kb: int) -> None:
    """MemAvailable and MemTotal are read in kB and returned in MB, whatever the order."""
    text = f"MemFree:  5 kB\nMemAvailable: {avail_kb} kB\nMemTotal:   {total_kb} kB\n"
    assert parse_meminfo(text) == (avail_kb // 1024, total_kb // 1024)
    assert parse_meminfo("MemTotal: 5 kB\n") is None


def test_format_checks_puts_each_fix_under_its_check() -> None:
    """The table shows each failed or warning check's fix on the next line and ends
    with the verdict."""
    text = format_checks(
        [
            Check("endpoint", "fail", "cannot reach x", "is the server running?"),
            Check("gpu", "warn", "hot", "cool it"),
            Check("memory", "ok", "plenty", "never shown"),
        ]
    )
    lines = text.splitlines()
    assert lines[0].startswith("FAIL  endpoint") and lines[1].strip() == "-> is the server running?"
    assert lines[2].startswith("WARN  gpu") and lines[3].strip() == "-> cool it"
    assert "never shown" not in text
    assert lines[-1] == "not ready: 1 failed, 1 warning(s)"


def test_defaults_follow_seed_003() -> None:
    """Seed 003's go/no-go list: refuse under 4 GB available memory, warn above 95% GPU
    memory."""
    params = inspect.signature(preflight).parameters
    assert params["min_free_memory_mb"].default == 4096
    assert params["gpu_memory_warn"].default == 0.95


def test_a_very_short_key_is_redacted_as_a_whole_token_only() -> None:
    from conveyor.cli._preflight import redact_secret

    text = "model text-embedding-3-small, journal /tmp/exp/j.db, key x"
    assert (
        redact_secret(text, "x") == "model text-embedding-3-small, journal /tmp/exp/j.db, key ***"
    )
    assert redact_secret(f"Bearer {KEY} refused", KEY) == "Bearer *** refused"
    assert redact_secret(f"url?key={KEY}&a=1", KEY) == "url?key=***&a=1"


async def test_doctor_with_a_one_letter_key_keeps_model_and_paths(
    tmp_path: Path, start_mock: Callable[..., MockServer]
) -> None:
    srv = start_mock(api_key="x", models=("text-embedding-3-small",))
    journal = tmp_path / "exp" / "j.db"
    journal.parent.mkdir()
    checks = await check(
        srv.base_url, api_key="x", model="text-embedding-3-small", journal_path=journal
    )
    out = format_checks(checks)
    assert "text-embedding-3-small" in out
    assert str(journal.parent) in out or "exp" in out
    assert "e***p" not in out and "te***t" not in out


async def test_gpu_limits_block_the_run(tmp_path: Path) -> None:
    """--max-gpu-memory 95 / --max-gpu-utilization: a GPU above them fails (blocks)."""
    exe = fake_nvidia_smi(
        tmp_path, "print('0, Tesla T4, 45, 5898, 6144')\nprint('1, Tesla T4, 99, 3072, 6144')"
    )
    base = f"http://127.0.0.1:{closed_port()}/v1"
    c = by_name(await check(base, nvidia_smi=exe, max_gpu_memory=95))
    assert c["gpu 0"].status == "fail" and "--max-gpu-memory" in c["gpu 0"].detail
    assert c["gpu 1"].status == "ok"
    c = by_name(await check(base, nvidia_smi=exe, max_gpu_utilization=90))
    assert c["gpu 0"].status == "warn" and c["gpu 1"].status == "fail"


async def test_user_checks_pass_or_block_with_their_reason() -> None:
    def db_reachable() -> None:
        return None

    async def queue_empty() -> bool:
        return True

    def gpu_driver() -> str:
        return "driver 470 is too old"

    def broken() -> None:
        raise ConnectionRefusedError("db at :5432 refused")

    base = f"http://127.0.0.1:{closed_port()}/v1"
    c = by_name(await check(base, checks=[db_reachable, queue_empty, gpu_driver, broken]))
    assert c["check db_reachable"].status == "ok"
    assert c["check queue_empty"].status == "ok"
    assert c["check gpu_driver"].status == "fail"
    assert c["check gpu_driver"].detail == "driver 470 is too old"
    assert c["check broken"].status == "fail" and "5432 refused" in c["check broken"].detail


def test_cli_check_option_loads_a_function_and_blocks(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from conveyor.cli._observe import doctor_cmd

    (tmp_path / "mychecks_t17.py").write_text("def db():\n    return 'no connection to db'\n")
    sys.path.insert(0, str(tmp_path))
    try:
        base = f"http://127.0.0.1:{closed_port()}/v1"
        args = ["--base-url", base, "--min-free-memory", "0", "--min-free-disk", "0"]
        res = CliRunner().invoke(doctor_cmd, [*args, "--check", "mychecks_t17:db"])
        assert "check db" in res.output and "no connection to db" in res.output
        assert res.exit_code == 2
        bad = CliRunner().invoke(doctor_cmd, [*args, "--check", "nomodule_t17:x"])
        assert (bad.exit_code == 2 and "MODULE" in bad.output) or "cannot load" in bad.output
    finally:
        sys.path.remove(str(tmp_path))


async def test_a_proxy_variable_is_named_as_unused(
    server: MockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """conveyor connects directly: an HTTP_PROXY that applies to the endpoint is a
    warning that names the variable (the proxy's credentials left out) and what to
    do; the endpoint itself is still reached directly. NO_PROXY covering the host
    says so, and is not a warning."""
    monkeypatch.setenv("HTTP_PROXY", "http://someone:s3cret@proxy.invalid:3128")
    c = by_name(await check(server.base_url, model="mock-gpt"))
    proxy = c["proxy"]
    assert proxy.status == "warn", proxy
    assert "HTTP_PROXY" in proxy.detail and "proxy.invalid:3128" in proxy.detail
    assert "s3cret" not in proxy.detail and "someone" not in proxy.detail
    assert "127.0.0.1" in proxy.detail and "NO_PROXY" in proxy.fix
    assert c["endpoint"].status == "ok"  # reached directly, not through proxy.invalid
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    proxy = by_name(await check(server.base_url, model="mock-gpt"))["proxy"]
    assert proxy.status == "ok" and "NO_PROXY covers 127.0.0.1" in proxy.detail
