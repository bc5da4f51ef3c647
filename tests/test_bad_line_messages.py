"""Every bad-line message says which file and line (and which item, when the line
has a custom_id): the readers of Batch files, records (JSONL and CSV) and
templates, `--strict`, the dry run, the output's error lines, exec's inputs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from conveyor._base._exceptions import InputError
from conveyor.cli import _exec
from conveyor.mock import MockServer
from conveyor.openai._batchfile import BadLine, read_requests, validate_file
from conveyor.openai._template import read_records

CONVEYOR = [sys.executable, "-m", "conveyor.cli"]

BATCH_LINES = [
    b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
    b'"body": {"model": "m", "messages": []}}',
    b"{broken",
    b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}',
    b'{"custom_id": "c", "method": "GET", "url": "/v1/chat/completions", "body": {}}',
    b"[1, 2]",
]


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_batch_file_bad_lines_name_file_line_and_key(tmp_path: Path) -> None:
    p = write(tmp_path / "in.jsonl", BATCH_LINES)
    bad = [x for x in read_requests(p) if isinstance(x, BadLine)]
    said = [b.describe() for b in bad]
    assert [b.line for b in bad] == [2, 3, 4, 5]
    assert all(s.startswith(f"{p}:{b.line}") for s, b in zip(said, bad, strict=True))
    # The JSON error's own position is a column of that line, not "line 1".
    assert said[0].startswith(f"{p}:2: not valid JSON: ")
    assert " at column " in said[0] and "line 1 column" not in said[0]
    assert said[2] == f"{p}:4 (custom_id 'c'): method must be POST, got 'GET'"
    assert "(custom_id" not in said[1]  # a repeated id is not this line's key
    # --strict / --dry-run read the same way.
    assert validate_file(p).problems() == said


def test_records_bad_lines_name_the_file(tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text('id,text\n1,hello\n2,"never closed\n3,x\n4,a,b\n')
    bad = [r for r in read_records(csv) if isinstance(r, BadLine)]
    assert [b.describe() for b in bad] == [
        f"{csv}:3: CSV error: a quote opened on this line is not closed",
        f"{csv}:5: row has 3 fields, the header (line 1) has 2",
    ]
    jl = write(tmp_path / "rows.jsonl", [b'{"id": 1}', b'{"id":', b"[]"])
    bad = [r for r in read_records(jl) if isinstance(r, BadLine)]
    assert [b.line for b in bad] == [2, 3]
    assert all(b.describe().startswith(f"{jl}:{b.line}: ") for b in bad)


@pytest.fixture
def env() -> dict[str, str]:
    e = dict(os.environ)
    e["OPENAI_API_KEY"] = "sk-bad-lines"
    e.pop("OPENAI_BASE_URL", None)
    return e


def test_template_errors_name_file_line_and_key_in_output_and_strict(
    start_mock: Callable[..., MockServer], env: dict[str, str], tmp_path: Path
) -> None:
    """A record the template cannot render: its output error line, the dry run
    and --strict each say `rows.csv:3 (custom_id '2'): ...`."""
    srv = start_mock(api_key="sk-bad-lines", latency=0.0)
    rows = tmp_path / "rows.csv"
    rows.write_text("id,text,extra\n1,hello,x\n2,world,\n")
    tpl = tmp_path / "t.toml"
    tpl.write_text('model = "mock-gpt"\nuser = "{{ text }} {{ extra if extra else nope }}"\n')
    out = tmp_path / "o.jsonl"
    common = [str(rows), "--template", str(tpl), "--id-column", "id"]
    r = subprocess.run([*CONVEYOR, "run", *common, "-o", str(out), "--base-url", srv.base_url,
                        "--no-preflight", "-q"], capture_output=True, text=True, env=env,
                       timeout=120)  # fmt: skip
    assert r.returncode == 1, r.stderr
    errors = [x["error"] for x in map(orjson.loads, out.read_bytes().splitlines()) if x["error"]]
    assert len(errors) == 1 and errors[0]["line"] == 3
    assert errors[0]["message"].startswith(f"{rows}:3 (custom_id '2'): the 'user' template")
    r = subprocess.run([*CONVEYOR, "run", *common, "--dry-run"], capture_output=True, text=True,
                       env=env, timeout=120)  # fmt: skip
    assert f"  {rows}:3 (custom_id '2'): the 'user' template" in r.stdout, r.stdout
    r = subprocess.run([*CONVEYOR, "run", *common, "-o", str(tmp_path / "s.jsonl"), "--strict",
                        "--base-url", srv.base_url, "--no-preflight", "-q"], capture_output=True,
                       text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 2
    assert f"{rows}:3 (custom_id '2'): the 'user' template" in r.stderr, r.stderr


def test_exec_overlong_line_from_a_pipe_names_stdin_and_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_exec, "_LINE_LIMIT", 64)
    r, w = os.pipe()
    os.write(w, b"short\n" + b"x" * 200 + b"\n")
    os.close(w)

    async def read_all() -> list[str]:
        with os.fdopen(r, "rb", buffering=0) as f:
            return [line async for line in _exec.aread_lines(f)]

    with pytest.raises(InputError) as caught:
        asyncio.run(read_all())
    assert str(caught.value).startswith("stdin:2: the line is longer than")
