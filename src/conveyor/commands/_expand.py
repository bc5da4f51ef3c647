"""GNU parallel's replacement strings, and safe names derived from job keys.

Pure functions: no I/O. The replacement strings follow GNU parallel's own
definitions (`man parallel`, "--rpl"): `{}` the input, `{.}` without its
extension, `{/}` its basename, `{//}` its dirname, `{/.}` basename without
extension, `{#}` the job's sequence number, `{%}` its job slot (1..jobs, the
lowest free one when it starts: `CUDA_VISIBLE_DEVICES={%}` pins a device per
slot). With several input sources (`::: a b ::: c d`) `{1}`, `{2}` are the
job's n-th argument (and `{1.}`, `{1/}`, `{1//}`, `{1/.}` their variants);
`{}` is all of them joined by a space.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "branch_name",
    "expand",
    "expand_shell",
    "has_replacement",
    "highest_position",
    "safe_name",
]

# Longer tokens first so `{//}` and `{/.}` are not read as `{/}`.
_TOKEN = re.compile(r"\{(?:([1-9][0-9]*)(//|/\.|/|\.|)|(//|/\.|/|\.|#|%|))\}")
# GNU parallel: s:\.[^/.]+$:: - an extension has at least one character and no dot or slash.
_EXTENSION = re.compile(r"\.[^/.]+\Z")


def _basename(value: str) -> str:
    return value.rpartition("/")[2]


def _dirname(value: str) -> str:
    # Perl's File::Basename::dirname, which GNU parallel calls: "." for a bare
    # name, "/" at the root, trailing slashes ignored.
    stripped = value.rstrip("/")
    if not stripped:
        return "/" if value else "."
    head, sep, _ = stripped.rpartition("/")
    if not sep:
        return "."
    return head.rstrip("/") or "/"


def _no_extension(value: str) -> str:
    return _EXTENSION.sub("", value)


def _transform(token: str, value: str) -> str:
    if token == "":
        return value
    if token == ".":
        return _no_extension(value)
    if token == "/":
        return _basename(value)
    if token == "//":
        return _dirname(value)
    return _no_extension(_basename(value))  # "/."


def _replacer(
    value: str, seq: int, args: Sequence[str] = (), slot: int = 1
) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        position, positional, token = match.group(1), match.group(2), match.group(3)
        if position is not None:
            n = int(position)
            arg = (args[n - 1] if n <= len(args) else "") if args else (value if n == 1 else "")
            return _transform(positional, arg)
        if token == "#":
            return str(seq)
        if token == "%":
            return str(slot)
        return _transform(token, value)

    return replace


def _numeric(match: re.Match[str]) -> bool:
    return match.group(3) in ("#", "%")


def highest_position(text: str) -> int:
    """The largest n of the `{n}` strings in `text` (0 when there are none)."""
    return max((int(m.group(1)) for m in _TOKEN.finditer(text) if m.group(1)), default=0)


def has_replacement(text: str) -> bool:
    """Whether `text` holds any of the replacement strings `expand` knows."""
    return _TOKEN.search(text) is not None


def expand(
    argv_template: Sequence[str],
    value: str,
    seq: int,
    *,
    args: Sequence[str] = (),
    slot: int = 1,
) -> list[str]:
    """Fill GNU parallel replacement strings in each argv element with `value`.

    Each element is expanded on its own and stays one element, so the input
    can never be split into several arguments or read by a shell. Text that
    the input brings in is not expanded again. When no element holds a
    replacement string, the input is appended as the last argument (each of
    `args`, with several sources), as GNU parallel does. `seq` is the 1-based
    job sequence number for `{#}`, `slot` the job slot for `{%}`.
    """
    if isinstance(argv_template, str):
        raise TypeError(
            "expand() takes a sequence of argv elements; use expand_shell() for a string"
        )
    replace = _replacer(value, seq, args, slot)
    template = list(argv_template)
    if not any(has_replacement(arg) for arg in template):
        return [*template, *(args or [value])]
    return [_TOKEN.sub(replace, arg) for arg in template]


def expand_shell(
    command_template: str,
    value: str,
    seq: int,
    *,
    args: Sequence[str] = (),
    slot: int = 1,
) -> str:
    """Like `expand` for a shell command line: every substituted value is shell-quoted.

    `shlex.split` of the result gives back the values as whole words, so an
    input like `x; rm -rf ~` stays one literal argument.
    """
    inner = _replacer(value, seq, args, slot)

    def replace(match: re.Match[str]) -> str:
        if _numeric(match):
            return inner(match)
        return shlex.quote(inner(match))

    if not has_replacement(command_template):
        return " ".join([command_template, *(shlex.quote(a) for a in (args or [value]))])
    return _TOKEN.sub(replace, command_template)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 80


def safe_name(key: str) -> str:
    """A file-name-safe, deterministic form of a job key (distinct keys stay distinct).

    Keeps `[A-Za-z0-9._-]`; when anything had to change, a short hash of the
    original key is appended so that `a/b` and `a_b` never share a directory.
    """
    name = _UNSAFE.sub("_", key)
    name = re.sub(r"\.{2,}", ".", name).strip("._-")[:_MAX_NAME].rstrip(".")
    if name.endswith(".lock"):
        name += "_"
    if name != key or not name:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = f"{name}-{digest}" if name else f"job-{digest}"
    return name


def branch_name(key: str, attempt: int = 1) -> str:
    """The git branch for a job key: `conveyor/<safe key>`, `-<n>` added on later attempts.

    Always a valid branch name (`git check-ref-format --branch` accepts it).
    """
    base = f"conveyor/{safe_name(key)}"
    return base if attempt <= 1 else f"{base}-{attempt}"
