"""The layout's rules, read from the source with `ast`: layers import downward only, no
module imports itself back through others, and library code never names a CLI flag.

Arrows are runtime imports, at module level or inside functions (lazy imports count).
Imports under `if TYPE_CHECKING:` are left out: they exist only for the type checker,
run nothing, and let a lower layer name a higher layer's type in an annotation
(`CommandFailed.result: CommandResult`).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import conveyor

PACKAGE = Path(conveyor.__file__).parent

# Each part and the parts it may import at run time. A part is the first name under
# `conveyor` (`conveyor._core._engine` is in `_core`); "conveyor" is the top
# `__init__.py`. Layers, bottom up:
#   _base < _core < _journal < _render;  ray (a backend of the engine) on _core;
#   _pipeline (one journaled run) on _journal; _monitor (resource probes) on _core;
#   _api (run/stream front end) and executors over the engine;
#   openai, commands, mock;  cli on top of everything.
#   _batchapi (the Files + Batch API objects, store and routes) on _base only, so the
#   mock and `conveyor serve` share it.
ALLOWED: dict[str, frozenset[str]] = {
    "_base": frozenset(),
    "_core": frozenset({"_base"}),
    "_journal": frozenset({"_base", "_core"}),
    "_render": frozenset({"_base", "_core", "_journal"}),
    "ray": frozenset({"_base", "_core"}),
    "_pipeline": frozenset({"_base", "_core", "_journal"}),
    "_monitor": frozenset({"_base", "_core"}),
    "_api": frozenset({"_base", "_core", "_journal", "_pipeline", "_monitor", "ray"}),
    "executors": frozenset({"_base", "_core", "_api"}),
    "openai": frozenset({"_base", "_core", "_journal", "_pipeline", "_render", "_api", "ray"}),
    "commands": frozenset({"_base", "_core", "_journal", "_pipeline", "_api"}),
    "_batchapi": frozenset({"_base"}),
    "mock": frozenset({"_base", "_batchapi"}),
    # `conveyor serve`: the Batch API (_batchapi) over `conveyor run` (openai) and one
    # in-process upstream limiter (ray._limiter); the cli only parses its flags.
    "serve": frozenset(
        {"_base", "_core", "_journal", "_pipeline", "_api", "openai", "ray", "_batchapi"}
    ),
    "cli": frozenset(
        {
            "_base",
            "_core",
            "_journal",
            "_pipeline",
            "_render",
            "_monitor",
            "ray",
            "_api",
            "openai",
            "commands",
            "mock",
            "_batchapi",
            "serve",
        }
    ),
    "conveyor": frozenset({"_base", "_core", "_monitor", "_api", "executors"}),
    "__main__": frozenset({"cli"}),
}

# A CLI flag such as `--journal` or `--no-preflight`.
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")

# Flags of other tools that messages may name: they are not ours to translate.
_FOREIGN_FLAGS = {
    "--joblog",  # GNU parallel's job log format, which `conveyor exec` reads and writes
    "--head",  # `ray start --head`, in the advice for an unreachable cluster
}


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "conveyor._core._engine"
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def part(self) -> str:
        parts = self.name.split(".")
        return parts[1] if len(parts) > 1 else "conveyor"


def _modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["conveyor", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        found[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in `tree`, in functions too, except under TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _targets(module: Module) -> set[str]:
    """The conveyor modules that `module` imports at run time."""
    out: set[str] = set()
    for node in _runtime_imports(module.tree):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            names: list[str] = []
        else:
            if node.level:
                package = module.name.split(".")
                if not module.is_package:
                    package.pop()
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            bases = [base]
            names = [alias.name for alias in node.names]
        for base in bases:
            # `from pkg import sub` imports the module pkg.sub; `from mod import name`, mod.
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            if subs:
                out.update(subs)
            if (base in MODULES and len(subs) < len(names)) or (base in MODULES and not names):
                out.add(base)
    out.discard(module.name)
    return out


GRAPH = {name: _targets(module) for name, module in MODULES.items()}


def test_every_part_is_in_the_table() -> None:
    """A new top-level module or package must be placed in ALLOWED before it can land."""
    assert {m.part for m in MODULES.values()} <= set(ALLOWED)


def test_layers_import_downward_only() -> None:
    """No arrow runs from a part to one it may not import (see ALLOWED)."""
    wrong = [
        f"{name} -> {target}"
        for name, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if (src := MODULES[name].part) != (dst := MODULES[target].part) and dst not in ALLOWED[src]
    ]
    assert wrong == []


def test_private_packages_say_what_they_may_import() -> None:
    """Each private package's docstring names what it may import."""
    for name, module in MODULES.items():
        if module.is_package and name.count(".") == 1 and module.part.startswith("_"):
            doc = ast.get_docstring(module.tree) or ""
            assert "imports" in doc.lower(), name


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            connect(v)
    return components


def test_no_import_cycles() -> None:
    """No module reaches itself again through its runtime imports, lazy ones included."""
    assert _cycles() == []


def test_the_walk_sees_lazy_and_relative_imports() -> None:
    """The graph resolves relative imports and sees imports inside functions."""
    assert "conveyor.ray._run" in GRAPH["conveyor._api"]  # lazy: only for backend="ray"
    assert "conveyor._base._exceptions" in GRAPH["conveyor._core._item"]
    assert "conveyor.commands._batch" in GRAPH["conveyor.commands"]


def _error_names() -> set[str]:
    tree = MODULES["conveyor._base._exceptions"].tree
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


def _strings(node: ast.AST) -> list[str]:
    return [
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def _message_strings(module: Module, errors: set[str]) -> list[str]:
    """Strings that can end up in an error message: in `raise` statements, in calls
    that build one of our errors, and in the error classes themselves (not docstrings)."""
    found: list[str] = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Raise):
            found += _strings(node)
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if called in errors:
                found += _strings(node)
        elif isinstance(node, ast.ClassDef) and node.name in errors:
            for item in node.body:
                if not (isinstance(item, ast.Expr) and isinstance(item.value, ast.Constant)):
                    found += _strings(item)
    return found


def test_library_errors_name_no_cli_flags() -> None:
    """Outside `cli/`, messages name Python parameters (`journal=`), never a CLI flag
    (`--journal`): a library user has no flags to pass."""
    errors = _error_names()
    named = sorted(
        {
            f"{name}: {flag}"
            for name, module in MODULES.items()
            if module.part not in ("cli", "__main__")
            for text in _message_strings(module, errors)
            for flag in _FLAG.findall(text)
            if flag not in _FOREIGN_FLAGS
        }
    )
    assert named == []
