"""Records (CSV/JSONL) plus a Jinja2 prompt template -> requests (`conveyor.openai._template`)."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor._base._exceptions import ConfigError, InputError
from conveyor.openai._batchfile import BadLine, RequestLine, read_requests
from conveyor.openai._template import PromptTemplate, Record, build_requests, read_records

if TYPE_CHECKING:
    from pathlib import Path

TEMPLATE_TOML = '''\
model = "gpt-4o-mini"
system = "You label comments."
user = """
Comment {{ id }} by {{ author }}:
{{ body }}
"""

[params]
temperature = 0
max_tokens = 50
response_format = { type = "json_object" }
'''


def template_file(tmp_path: Path, text: str = TEMPLATE_TOML) -> Path:
    p = tmp_path / "prompt.toml"
    p.write_text(text, encoding="utf-8")
    return p


# -- records ----------------------------------------------------------------


def test_csv_records_with_header_bom_crlf_blank_and_multiline(tmp_path: Path) -> None:
    """CSV rows become Records keyed by the header, numbered by the line they start on;
    BOM, CRLF, blank lines and quoted multi-line fields are handled."""
    p = tmp_path / "in.csv"
    p.write_bytes(
        b'\xef\xbb\xbfid, author ,body\r\n1,ann,hello\r\n\r\n2,bob,"two\r\nlines"\r\n3,cy,last'
    )
    assert list(read_records(p)) == [
        Record(2, {"id": "1", "author": "ann", "body": "hello"}),
        Record(4, {"id": "2", "author": "bob", "body": "two\r\nlines"}),
        Record(6, {"id": "3", "author": "cy", "body": "last"}),
    ]


def test_csv_bad_rows_are_bad_lines_and_reading_goes_on(tmp_path: Path) -> None:
    """A row with the wrong number of fields or bytes that are not UTF-8 is a BadLine on
    its line; the rows after it are still read."""
    p = tmp_path / "in.csv"
    p.write_bytes(b"a,b\n1,2\n1,2,3\nx\xff,y\n4,5\n")
    items = list(read_records(p))
    assert items[0] == Record(2, {"a": "1", "b": "2"})
    assert items[1] == BadLine(3, "row has 3 fields, the header (line 1) has 2")
    assert isinstance(items[2], BadLine)
    assert items[2].line == 4
    assert items[2].reason.startswith("not UTF-8")
    assert items[3] == Record(5, {"a": "4", "b": "5"})


def test_one_column_csv_keeps_empty_values(tmp_path: Path) -> None:
    """In a one-column CSV a quoted empty or spaces-only row is a record, not a blank line."""
    p = tmp_path / "in.csv"
    p.write_bytes(b'text\n""\n  \n\nx\n')
    assert list(read_records(p)) == [
        Record(2, {"text": ""}),
        Record(3, {"text": "  "}),
        Record(5, {"text": "x"}),
    ]


def test_tsv_is_read_with_tabs(tmp_path: Path) -> None:
    """A .tsv file is split on tabs."""
    p = tmp_path / "in.tsv"
    p.write_text("a\tb\n1,x\t2\n", encoding="utf-8")
    assert list(read_records(p)) == [Record(2, {"a": "1,x", "b": "2"})]


@pytest.mark.parametrize(
    ("header", "message"),
    [(b"id,id\n", "names 'id' twice"), (b"id,,x\n", "column 2 has no name")],
)
def test_unusable_csv_header_raises(tmp_path: Path, header: bytes, message: str) -> None:
    """A header with a repeated or empty column name is an InputError naming file and line."""
    p = tmp_path / "in.csv"
    p.write_bytes(header + b"1,2,3\n")
    with pytest.raises(InputError, match=rf"in\.csv:1: .*{message}"):
        list(read_records(p))


@pytest.mark.parametrize("ext", [".jsonl", ".ndjson", ".json"])
def test_jsonl_records(tmp_path: Path, ext: str) -> None:
    """JSON-lines files give a Record per object and a BadLine for anything else."""
    p = tmp_path / f"in{ext}"
    p.write_bytes(b'{"id": 1, "text": "a"}\n\n[1]\n{oops\n{"id": 2}\n')
    items = list(read_records(p))
    assert items[0] == Record(1, {"id": 1, "text": "a"})
    assert items[1] == BadLine(3, "record must be a JSON object, got array")
    assert isinstance(items[2], BadLine)
    assert items[2].line == 4
    assert items[2].reason.startswith("not valid JSON")
    assert items[3] == Record(5, {"id": 2})


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    """An unknown extension or a missing file raises InputError saying what to do."""
    with pytest.raises(InputError, match=r"unknown record format '\.txt'.*\.csv"):
        read_records(tmp_path / "in.txt")
    with pytest.raises(InputError, match="file not found"):
        read_records(tmp_path / "missing.csv")


_cell = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    columns=st.integers(1, 4).flatmap(
        lambda n: st.tuples(
            st.just(n), st.lists(st.lists(_cell, min_size=n, max_size=n), max_size=8)
        )
    )
)
def test_csv_round_trip(tmp_path: Path, columns: tuple[int, list[list[str]]]) -> None:
    """Any table csv.writer produces (quotes, commas, newlines in cells) reads back as
    the same records, in order, with increasing line numbers."""
    n, rows = columns
    header = [f"c{i}" for i in range(n)]
    buf = io.StringIO()
    # The default "\r\n" terminator makes csv.writer quote cells holding a bare "\r".
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    p = tmp_path / "rt.csv"
    p.write_bytes(buf.getvalue().encode())
    items = list(read_records(p))
    # csv.writer writes an all-empty row as a line of commas, never as a blank line.
    assert all(isinstance(i, Record) for i in items), items
    assert [i.data for i in items if isinstance(i, Record)] == [
        dict(zip(header, r, strict=True)) for r in rows
    ]
    lines = [i.line for i in items]
    assert lines == sorted(set(lines))
    assert all(line >= 2 for line in lines)


# -- the template -----------------------------------------------------------


def test_load_and_render_template(tmp_path: Path) -> None:
    """A TOML template renders system and user from a record's fields; undefined output is
    not HTML-escaped."""
    t = PromptTemplate.load(template_file(tmp_path))
    assert t.model == "gpt-4o-mini"
    assert t.params == {
        "temperature": 0,
        "max_tokens": 50,
        "response_format": {"type": "json_object"},
    }
    system, user = t.render({"id": 7, "author": "<ann>", "body": "a & b"}, line=2)
    assert system == "You label comments."
    assert user == "Comment 7 by <ann>:\na & b"


def test_template_from_strings_with_record_and_line_variables() -> None:
    """Templates can be given as strings; `record` reaches fields with odd names, `line` is set."""
    t = PromptTemplate(user='{{ record["first name"] }} @{{ line }}')
    assert t.render({"first name": "Ada"}, line=9) == (None, "Ada @9")


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ('user = "x"\nsystem = "unterminated\n', "not valid TOML", 2),
        ('system = "s"\n', "missing required key 'user'", None),
        ('user = "x"\nsytem = "y"\n', "unknown key 'sytem'", None),
        ("user = 5\n", "'user' must be a string, got number", 1),
        ('user = "x"\nparams = 3\n', "'params' must be a table", None),
        ('user = "x"\n[params]\nmessages = []\n', r"\[params\] may not set messages", None),
        (
            'model = "m"\n\nuser = """\nline one\n{{ oops }\n"""\n',
            "Jinja syntax error in the 'user'",
            5,
        ),
        ("system = '{% if %}'\nuser = 'u'\n", "Jinja syntax error in the 'system'", 1),
    ],
)
def test_template_file_errors_name_path_and_line(
    tmp_path: Path, text: str, message: str, line: int | None
) -> None:
    """Every template-file problem raises InputError with the path, the line where known,
    and what is wrong."""
    p = template_file(tmp_path, text)
    with pytest.raises(InputError, match=message) as info:
        PromptTemplate.load(p)
    assert info.value.path == str(p)
    assert info.value.line == line
    assert str(p) in str(info.value)


def test_missing_template_file(tmp_path: Path) -> None:
    """A missing template file is an InputError naming it."""
    with pytest.raises(InputError, match=r"nope\.toml: file not found"):
        PromptTemplate.load(tmp_path / "nope.toml")


# -- requests ---------------------------------------------------------------


def test_build_requests_chat_bodies(tmp_path: Path) -> None:
    """Each record becomes a POST chat request: model, system+user messages, then params;
    custom_id is line-<n> without an id column."""
    t = PromptTemplate.load(template_file(tmp_path))
    records = [Record(2, {"id": 1, "author": "a", "body": "b"})]
    (out,) = build_requests(records, t, model=None)
    assert isinstance(out, RequestLine)
    assert (out.line, out.custom_id, out.method, out.url) == (
        2,
        "line-2",
        "POST",
        "/v1/chat/completions",
    )
    assert out.body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You label comments."},
            {"role": "user", "content": "Comment 1 by a:\nb"},
        ],
        "temperature": 0,
        "max_tokens": 50,
        "response_format": {"type": "json_object"},
    }
    (override,) = build_requests(records, t, model="other")
    assert isinstance(override, RequestLine)
    assert override.body["model"] == "other"


def test_undefined_field_is_a_bad_line_naming_field_and_line() -> None:
    """A record without a field the template uses is a BadLine naming the field, and the
    next records still build."""
    t = PromptTemplate(user="{{ title }}: {{ text }}")
    out = list(
        build_requests(
            [
                Record(2, {"title": "a", "text": "b"}),
                Record(3, {"title": "c"}),
                Record(4, {"title": "d", "text": "e"}),
            ],
            t,
            model="m",
        )
    )
    assert isinstance(out[0], RequestLine)
    assert isinstance(out[1], BadLine)
    assert out[1].line == 3
    assert "'text' is undefined" in out[1].reason
    assert "this record has: title" in out[1].reason
    assert isinstance(out[2], RequestLine)


def test_sandbox_blocks_attribute_tricks() -> None:
    """The sandbox refuses access to Python internals: the record becomes a BadLine."""
    t = PromptTemplate(user="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    (out,) = build_requests([Record(1, {})], t, model="m")
    assert isinstance(out, BadLine)
    assert "SecurityError" in out.reason


def test_id_column_missing_empty_and_duplicate() -> None:
    """custom_id comes from id_column; a missing, empty or repeated id is a BadLine, and
    bad lines from the reader pass through untouched."""
    t = PromptTemplate(user="{{ x }}")
    records: list[Record | BadLine] = [
        Record(2, {"id": "a", "x": 1}),
        Record(3, {"x": 2}),
        Record(4, {"id": "  ", "x": 3}),
        Record(5, {"id": "a", "x": 4}),
        BadLine(6, "not valid JSON: ..."),
        Record(7, {"id": 42, "x": 5}),
        Record(8, {"id": [1], "x": 6}),
    ]
    out = list(build_requests(records, t, model="m", id_column="id"))
    assert [type(o).__name__ for o in out] == [
        "RequestLine",
        "BadLine",
        "BadLine",
        "BadLine",
        "BadLine",
        "RequestLine",
        "BadLine",
    ]
    assert out[1] == BadLine(3, "id column 'id' is missing")
    assert out[2] == BadLine(4, "id column 'id' is empty")
    assert out[3] == BadLine(5, "custom_id 'a' repeats line 2", "a", 2)
    assert out[4] == records[4]
    assert out[5].custom_id == "42"
    assert isinstance(out[6], BadLine)
    assert "must be text or a number, got array" in out[6].reason


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("/v1/responses", {"model": "m", "input": "u", "instructions": "s"}),
        ("/v1/completions", {"model": "m", "prompt": "s\n\nu"}),
    ],
)
def test_other_endpoints_get_their_body_shape(endpoint: str, expected: dict[str, Any]) -> None:
    """Responses get input+instructions, legacy completions one prompt."""
    t = PromptTemplate(system="s", user="u")
    (out,) = build_requests([Record(1, {})], t, model="m", endpoint=endpoint)
    assert isinstance(out, RequestLine)
    assert out.body == expected
    assert out.url == endpoint


def test_config_errors_at_the_call() -> None:
    """No model anywhere, an unsupported endpoint, or a system message for embeddings
    raise ConfigError when build_requests is called."""
    with pytest.raises(ConfigError, match="model"):
        build_requests([], PromptTemplate(user="u"))
    with pytest.raises(ConfigError, match="endpoint"):
        build_requests([], PromptTemplate(user="u"), model="m", endpoint="/v1/images")
    with pytest.raises(ConfigError, match="no system message"):
        build_requests(
            [], PromptTemplate(system="s", user="u"), model="m", endpoint="/v1/embeddings"
        )


def test_built_requests_round_trip_through_a_batch_file(tmp_path: Path) -> None:
    """CSV + template -> Batch input lines that read_requests accepts unchanged."""
    src = tmp_path / "in.csv"
    src.write_text("id,author,body\nc1,ann,hi\nc2,bob,yo\n", encoding="utf-8")
    t = PromptTemplate.load(template_file(tmp_path))
    built = list(build_requests(read_records(src), t, model=None, id_column="id"))
    assert all(isinstance(r, RequestLine) for r in built)
    batch = tmp_path / "requests.jsonl"
    with batch.open("wb") as f:
        for r in built:
            assert isinstance(r, RequestLine)
            line = {"custom_id": r.custom_id, "method": r.method, "url": r.url, "body": r.body}
            f.write(orjson.dumps(line) + b"\n")
    back = list(read_requests(batch))
    assert [(b.custom_id, b.body) for b in back if isinstance(b, RequestLine)] == [
        (r.custom_id, r.body) for r in built if isinstance(r, RequestLine)
    ]


def test_csv_unterminated_quote_is_one_bad_line_and_later_rows_survive(tmp_path: Path) -> None:
    """An unterminated quote does not swallow the rest of the file: its line is
    bad and every later row is read."""
    p = tmp_path / "r.csv"
    p.write_text('name,q\na,"unterminated\nb,two\nc,three\n"ok\nmulti",four\n')
    got = list(read_records(p))
    bad = [g for g in got if isinstance(g, BadLine)]
    rows = {g.line: g.data for g in got if isinstance(g, Record)}
    assert [b.line for b in bad] == [2]
    assert "quote" in bad[0].reason
    assert rows == {3: {"name": "b", "q": "two"}, 4: {"name": "c", "q": "three"},
                    5: {"name": "ok\nmulti", "q": "four"}}  # fmt: skip


def test_csv_quote_swallowing_a_huge_field_is_bounded(tmp_path: Path) -> None:
    """A quote left open across more than the line limit: a bad line, then reading goes on."""
    p = tmp_path / "r.csv"
    p.write_text('name,q\na,"open\n' + "x,y\n" * 400 + 'z,"closed"\n')
    got = list(read_records(p, max_line_bytes=1000))
    bad = [g for g in got if isinstance(g, BadLine)]
    rows = [g for g in got if isinstance(g, Record)]
    assert bad[0].line == 2
    assert len(rows) == 401
