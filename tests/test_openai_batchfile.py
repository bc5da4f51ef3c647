"""OpenAI Batch input reading/validation and output formatting (`conveyor.openai._batchfile`)."""

from __future__ import annotations

import json
import time
import tracemalloc
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor._base._exceptions import InputError
from conveyor.openai._batchfile import (
    BadLine,
    RequestLine,
    endpoint_of,
    format_bad_line,
    format_error,
    format_response,
    format_response_raw,
    read_output,
    read_requests,
    validate_file,
)

if TYPE_CHECKING:
    from pathlib import Path


def req(cid: Any, url: str = "/v1/chat/completions", **extra: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": cid,
        "method": "POST",
        "url": url,
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {cid}"}]},
    }
    line.update(extra)
    return line


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def write(path: Path, *lines: bytes, sep: bytes = b"\n") -> Path:
    path.write_bytes(sep.join(lines) + sep)
    return path


def test_valid_lines_become_request_lines(tmp_path: Path) -> None:
    """Each valid line yields a RequestLine with its 1-based line, original url and endpoint."""
    p = write(
        tmp_path / "in.jsonl",
        dumps(req("a")),
        dumps(req("b", url="/embeddings", body={"model": "m", "input": "x"})),
    )
    items = list(read_requests(p))
    assert items == [
        RequestLine(1, "a", "POST", "/v1/chat/completions", req("a")["body"]),
        RequestLine(2, "b", "POST", "/embeddings", {"model": "m", "input": "x"}),
    ]
    assert [i.endpoint for i in items if isinstance(i, RequestLine)] == [
        "/chat/completions",
        "/embeddings",
    ]


def test_crlf_bom_blank_lines_and_trailing_whitespace(tmp_path: Path) -> None:
    """A BOM on line 1, CRLF endings, blank lines and trailing spaces are tolerated;
    blank lines are skipped but still count toward line numbers."""
    p = tmp_path / "in.jsonl"
    p.write_bytes(
        b"\xef\xbb\xbf"
        + dumps(req("a"))
        + b"  \r\n\r\n   \t\r\n"
        + dumps(req("b"))
        + b"\t\r\n"
        + dumps(req("c"))  # no final newline
    )
    items = list(read_requests(p))
    assert [(i.line, i.custom_id) for i in items] == [(1, "a"), (4, "b"), (5, "c")]
    assert all(isinstance(i, RequestLine) for i in items)


@pytest.mark.parametrize(
    ("line", "reason", "custom_id"),
    [
        (b'{"custom_id": "a", ', "not valid JSON: ", None),
        (b"[1, 2]", "line must be a JSON object, got array", None),
        (dumps({"method": "POST", "url": "/v1/embeddings", "body": {}}), "missing custom_id", None),
        (dumps(req(7)), "custom_id must be a non-empty string, got number 7", None),
        (dumps(req("")), "custom_id must be a non-empty string, got string ''", None),
        (dumps(req("g", method="GET")), "method must be POST, got 'GET'", "g"),
        (dumps({k: v for k, v in req("m").items() if k != "method"}), "missing method", "m"),
        (
            dumps(req("u", url="/v1/foo")),
            "url '/v1/foo' is not one of /v1/chat/completions, /v1/completions, "
            "/v1/embeddings, /v1/responses",
            "u",
        ),
        (dumps({**req("nu"), "url": None}), "missing url", "nu"),
        (dumps(req("s", body="text")), "body must be a JSON object, got string", "s"),
        (dumps({k: v for k, v in req("nb").items() if k != "body"}), "missing body", "nb"),
        (b'{"custom_id": "\xff\xfe"}', "not UTF-8: invalid byte 0xff at byte 16", None),
    ],
)
def test_bad_lines_say_what_is_wrong(
    tmp_path: Path, line: bytes, reason: str, custom_id: str | None
) -> None:
    """Every kind of bad line becomes a BadLine whose reason names the problem, on
    its own line number, and the lines around it are still read."""
    p = write(tmp_path / "in.jsonl", dumps(req("before")), line, dumps(req("after")))
    items = list(read_requests(p))
    assert len(items) == 3
    bad = items[1]
    assert isinstance(bad, BadLine)
    assert bad.line == 2
    assert bad.reason.startswith(reason), bad.reason
    assert bad.custom_id == custom_id
    assert isinstance(items[0], RequestLine)
    assert isinstance(items[2], RequestLine)
    assert items[2].line == 3


def test_duplicate_custom_id_names_the_first_line(tmp_path: Path) -> None:
    """The first line with an id is valid; each later one is a BadLine naming the first line."""
    p = write(
        tmp_path / "in.jsonl", dumps(req("x")), dumps(req("y")), dumps(req("x")), dumps(req("x"))
    )
    items = list(read_requests(p))
    assert isinstance(items[0], RequestLine)
    assert items[2] == BadLine(3, "custom_id 'x' repeats line 1", "x", 1)
    assert items[3] == BadLine(4, "custom_id 'x' repeats line 1", "x", 1)
    unchecked = list(read_requests(p, check_duplicates=False))
    assert all(isinstance(i, RequestLine) for i in unchecked)


def test_urls_with_or_without_v1_and_custom_allow_list(tmp_path: Path) -> None:
    """Allowed urls match with or without `/v1`; a custom allow-list replaces the default."""
    assert endpoint_of("/v1/responses") == endpoint_of("responses/") == "/responses"
    p = write(
        tmp_path / "in.jsonl",
        dumps(req("a", url="/chat/completions")),
        dumps(req("b", url="/v1/embeddings")),
    )
    assert all(isinstance(i, RequestLine) for i in read_requests(p))
    only_chat = list(read_requests(p, allowed_urls=["/v1/chat/completions"]))
    assert isinstance(only_chat[0], RequestLine)
    assert isinstance(only_chat[1], BadLine)
    assert "is not one of /v1/chat/completions" in only_chat[1].reason


def test_missing_file_raises_input_error_at_the_call(tmp_path: Path) -> None:
    """A missing input file raises InputError naming the path before any iteration."""
    with pytest.raises(InputError, match=r"nope\.jsonl: file not found"):
        read_requests(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="is a directory"):
        list(read_requests(tmp_path))


def test_overlong_line_is_a_bad_line_and_reading_goes_on(tmp_path: Path) -> None:
    """A line over the byte cap is reported (not loaded) and the next line still reads."""
    long = dumps(req("big", body={"model": "m", "input": "x" * 5000}))
    p = write(tmp_path / "in.jsonl", dumps(req("a")), long, dumps(req("c")))
    items = list(read_requests(p, max_line_bytes=1000))
    assert [type(i).__name__ for i in items] == ["RequestLine", "BadLine", "RequestLine"]
    assert isinstance(items[1], BadLine)
    assert items[1].line == 2
    assert items[1].describe().startswith(f"{p}:2: the line is longer than 1,000 bytes")
    assert "split the request" in items[1].reason
    assert items[2].line == 3


def test_validate_file_counts_everything(tmp_path: Path) -> None:
    """validate_file counts lines, valid, bad, blank, endpoints, models and token estimates."""
    p = write(
        tmp_path / "in.jsonl",
        dumps(req("a")),
        b"",
        dumps(
            req(
                "b",
                body={"model": "text-embedding-3-small", "input": "hello"},
                url="/v1/embeddings",
            )
        ),
        b"not json",
        dumps(req("a")),
        dumps(req("c", body={"messages": []})),
    )
    check = validate_file(p, estimate=True)
    assert (check.lines, check.valid, check.bad, check.blank) == (6, 3, 2, 1)
    assert not check.ok
    assert check.endpoints == {"/chat/completions": 2, "/embeddings": 1}
    assert check.models == {"gpt-4o-mini": 1, "text-embedding-3-small": 1, "(none)": 1}
    assert check.prompt_tokens > 0
    assert (
        check.max_output_tokens == 2 * 1024
    )  # two chat requests, default max, no output for embeddings
    assert check.problems() == [
        f"{p}:4: " + check.bad_lines[0].reason,
        f"{p}:5: custom_id 'a' repeats line 1",
    ]


def test_validate_file_keeps_first_bad_lines_and_counts_the_rest(tmp_path: Path) -> None:
    """Past `max_bad` bad lines are counted, not kept, and problems() says how many more."""
    p = write(tmp_path / "in.jsonl", *[b"{" for _ in range(30)])
    check = validate_file(p, max_bad=10)
    assert check.bad == 30
    assert len(check.bad_lines) == 10
    assert check.bad_omitted == 20
    assert check.problems()[-1] == f"... and 20 more bad lines in {p}"


def test_format_response_is_the_batch_output_shape() -> None:
    """A server answer (even a 400) goes in `response` with its body, error null, one line."""
    out = format_response("a", 400, {"error": {"message": "bad"}}, "req_1")
    assert out.endswith(b"\n")
    assert out.count(b"\n") == 1
    obj = orjson.loads(out)
    assert obj["id"].startswith("batch_req_")
    assert obj == {
        "id": obj["id"],
        "custom_id": "a",
        "response": {
            "status_code": 400,
            "request_id": "req_1",
            "body": {"error": {"message": "bad"}},
        },
        "error": None,
    }


def test_output_ids_are_stable_per_custom_id() -> None:
    """The same custom_id always gets the same batch_req id (resume writes identical lines);
    different ids and id-less lines on different input lines get different ones."""
    a1 = orjson.loads(format_response("a", 200, {}, None))["id"]
    a2 = orjson.loads(format_error("a", "timeout", "timed out after 30 s"))["id"]
    b = orjson.loads(format_response("b", 200, {}, None))["id"]
    n3 = orjson.loads(format_error(None, "invalid_request_line", "x", line=3))["id"]
    n4 = orjson.loads(format_error(None, "invalid_request_line", "x", line=4))["id"]
    assert a1 == a2
    assert len({a1, b, n3, n4}) == 4


def test_format_error_and_bad_line_name_the_input_line() -> None:
    """An error line has response null, a code, and a message naming the input line."""
    obj = orjson.loads(format_bad_line(BadLine(12, "missing custom_id")))
    assert obj["custom_id"] is None
    assert obj["response"] is None
    assert obj["error"] == {
        "code": "invalid_request_line",
        "message": "input line 12: missing custom_id",
        "line": 12,
    }
    plain = orjson.loads(format_error("k", "timeout", "no answer in 30 s"))
    assert plain["error"] == {"code": "timeout", "message": "no answer in 30 s"}


def test_read_output_round_trips_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    """read_output yields every written line; a final line cut mid-write is skipped."""
    p = tmp_path / "out.jsonl"
    lines = [format_response(f"id{i}", 200, {"i": i}, None) for i in range(3)]
    p.write_bytes(b"".join(lines) + lines[0][:20])
    got = list(read_output(p))
    assert [o["custom_id"] for o in got] == ["id0", "id1", "id2"]


def test_read_output_raises_on_a_corrupt_middle_line(tmp_path: Path) -> None:
    """A corrupt line that is not the last one is an InputError naming its line."""
    p = tmp_path / "out.jsonl"
    p.write_bytes(
        format_response("a", 200, {}, None) + b"garbage\n" + format_response("b", 200, {}, None)
    )
    with pytest.raises(InputError, match=r"out\.jsonl:2: not valid JSON"):
        list(read_output(p))


# -- fuzzing ----------------------------------------------------------------

_garbage = st.binary(max_size=60).filter(lambda b: b"\n" not in b)
_near_valid = st.builds(
    lambda i, cut, key, value: _mutate(dumps(req(f"near-{i}")), cut, key, value),
    st.integers(0, 10_000),
    st.integers(0, 200),
    st.sampled_from(["custom_id", "method", "url", "body", "extra"]),
    st.one_of(st.none(), st.integers(), st.text(max_size=5), st.just([]), st.just({})),
)


def _mutate(line: bytes, cut: int, key: str, value: Any) -> bytes:
    """Either truncate a valid line or replace one of its fields."""
    if cut % 2:
        return line[: cut % len(line)]
    obj = orjson.loads(line)
    obj[key] = value
    return json.dumps(obj).encode()  # stdlib: allows ints past 64 bits


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(
        st.one_of(
            st.tuples(st.just("valid"), st.just(b"")),
            st.tuples(st.just("garbage"), _garbage),
            st.tuples(st.just("near"), _near_valid),
        ),
        max_size=40,
    ),
    crlf=st.booleans(),
    bom=st.booleans(),
)
def test_fuzzed_input_never_raises_and_never_loses_a_valid_line(
    tmp_path: Path, lines: list[tuple[str, bytes]], crlf: bool, bom: bool
) -> None:
    """Arbitrary bytes and near-valid JSON mixed with valid lines: reading never raises,
    yields exactly one item per non-blank line in order, and every valid line comes
    out as a RequestLine on its own line number."""
    raw: list[bytes] = []
    expected_valid: dict[int, str] = {}
    for n, (kind, data) in enumerate(lines, 1):
        if kind == "valid":
            cid = f"valid-{n}"
            expected_valid[n] = cid
            data = dumps(req(cid))
        raw.append(data)
    sep = b"\r\n" if crlf else b"\n"
    p = tmp_path / "fuzz.jsonl"
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + sep.join(raw) + (sep if raw else b""))

    items = list(read_requests(p))

    def content(n: int, data: bytes) -> bytes:
        # The reader drops one BOM from line 1, whether we wrote it or fuzzing did.
        if n == 1 and not bom:
            data = data.removeprefix(b"\xef\xbb\xbf")
        return data.strip(b" \t\r\n\f\v")

    non_blank = [n for n, data in enumerate(raw, 1) if content(n, data)]
    assert [i.line for i in items] == non_blank
    got_valid = {i.line: i.custom_id for i in items if isinstance(i, RequestLine)}
    for n, cid in expected_valid.items():
        assert got_valid.get(n) == cid
    for i in items:
        if isinstance(i, BadLine):
            assert i.reason


@pytest.mark.slow  # a memory stress test; the default run keeps test_api's stream memory test
def test_streaming_memory_is_bounded(tmp_path: Path) -> None:
    """Reading a 200,000-line file keeps traced memory far below the file size
    (without the duplicate-id index, the only structure that grows with input)."""
    p = tmp_path / "big.jsonl"
    template = dumps(
        req("ID", body={"model": "m", "messages": [{"role": "user", "content": "y" * 200}]})
    )
    with p.open("wb") as f:
        for i in range(200_000):
            f.write(template.replace(b'"ID"', b'"r%d"' % i) + b"\n")
    size = p.stat().st_size
    deadline = time.monotonic() + 60
    tracemalloc.start()
    try:
        count = 0
        for item in read_requests(p, check_duplicates=False):
            assert isinstance(item, RequestLine)
            count += 1
            assert time.monotonic() < deadline
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 200_000
    assert size > 40_000_000
    assert peak < 1_000_000, f"peak traced memory {peak} bytes while streaming {size} bytes"


def test_every_duplicate_id_is_found_past_the_memory_part(tmp_path: Path) -> None:
    """100,000 lines, duplicates checked: each of the 100 repeats, spread over the file
    long after their first line (so most first lines are only in the scratch file, not
    in memory), is reported with that first line, and no other line is."""
    p = tmp_path / "dups.jsonl"
    template = dumps(req("ID", body={"model": "m", "messages": [{"role": "user", "content": "y"}]}))
    repeats: dict[int, int] = {}  # line -> the line whose id it repeats
    with p.open("wb") as f:
        for line in range(1, 100_001):
            if line % 1000 == 0:
                first = line // 2 + 1  # never itself a repeating line
                repeats[line] = first
                cid = b"r%d" % first
            else:
                cid = b"r%d" % line
            f.write(template.replace(b"ID", cid) + b"\n")
    deadline = time.monotonic() + 120
    found: dict[int, int | None] = {}
    for item in read_requests(p):
        if isinstance(item, BadLine):
            found[item.line] = item.duplicate_of
        assert time.monotonic() < deadline
    assert found == repeats


@pytest.mark.parametrize("depth", [300, 1000, 1020, 5000])
def test_a_deeply_nested_line_is_a_bad_line_with_its_number(tmp_path: Path, depth: int) -> None:
    """A line nested deeper than a request can be (and than the JSON encoder
    can send again) is a bad line naming its line number and the depth, so
    `--strict` refuses it and nothing downstream meets a RecursionError
    (#12.17)."""
    deep = "[" * depth + "]" * depth
    text = (
        dumps(req("ok-1")).decode()
        + "\n"
        + '{"custom_id": "deep", "method": "POST", "url": "/v1/chat/completions", '
        + f'"body": {{"model": "m", "messages": {deep}}}}}\n'
        + dumps(req("ok-2")).decode()
        + "\n"
    )
    path = tmp_path / "in.jsonl"
    path.write_text(text)
    items = list(read_requests(path))
    assert [type(x) for x in items] == [RequestLine, BadLine, RequestLine]
    bad = items[1]
    assert isinstance(bad, BadLine)
    assert bad.line == 2
    assert "nested" in bad.reason
    assert any(p.startswith(f"{path}:2:") for p in validate_file(path).problems())


_json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=12)
_json = st.recursive(
    _json_leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=10,
)


@settings(max_examples=60, deadline=None)
@given(
    body=st.dictionaries(st.text(max_size=6), _json, max_size=4),
    custom_id=st.text(min_size=1, max_size=12),
    request_id=st.none() | st.text(max_size=8),
    pretty=st.booleans(),
)
def test_raw_response_line_is_the_same_json_as_the_encoded_one(
    body: dict[str, Any], custom_id: str, request_id: str | None, pretty: bool
) -> None:
    """The output line built from the body's own bytes (issue 18: no second
    encoding) holds the same JSON as `format_response`'s, on one line; a body
    on several lines is left to `format_response`."""
    raw = json.dumps(body, indent=2 if pretty else None, ensure_ascii=pretty).encode()
    line = format_response_raw(custom_id, 200, raw, request_id)
    if b"\n" in raw:
        assert line is None
        return
    assert line is not None
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == orjson.loads(format_response(custom_id, 200, body, request_id))
