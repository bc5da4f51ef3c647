"""Names a package exports but imports on first use (PEP 562).

`import conveyor` (and so every `conveyor` command, which starts by importing
the package) would otherwise load the whole library: the engine, the
executors, the monitor, the HTTP client and aiohttp, whatever the command
needs. A package lists `name -> defining module` here instead; the module is
imported the first time the name is asked for.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping

__all__ = ["LazyExports"]


class LazyExports:
    """`name -> ".module"` (relative to `package`), loaded into `namespace` (the
    package's globals) on first use.

    `rename=True`: each object, once loaded, has its `__module__` set to the
    package's name (reprs and tracebacks say `conveyor.ConfigError`), and so has
    every other listed object whose module is loaded by then (by the package
    or by the library itself), so a report or error met before its name was
    asked for says `conveyor.X` too.
    """

    def __init__(
        self,
        package: str,
        namespace: MutableMapping[str, Any],
        table: Mapping[str, str],
        *,
        rename: bool = False,
    ) -> None:
        self._package = package
        self._ns = namespace
        self._todo = dict(table)
        self._rename = rename

    def load(self, name: str) -> Any:
        """The object `name` (the package's `__getattr__`)."""
        module = self._todo.get(name)
        if module is None:
            raise AttributeError(f"module {self._package!r} has no attribute {name!r}")
        importlib.import_module(module, self._package)
        self._take_loaded()
        return self._ns[name]

    def names(self, exported: list[str]) -> list[str]:
        """The package's `__dir__`: what it holds now and every name it exports."""
        return sorted(set(self._ns) | set(exported))

    def rename(self, obj: Any) -> None:
        if self._rename and getattr(obj, "__module__", "").startswith(self._package + "."):
            obj.__module__ = self._package

    def _take_loaded(self) -> None:
        for name, module in list(self._todo.items()):
            defined = sys.modules.get(self._package + module)
            if defined is not None and hasattr(defined, name):
                obj = getattr(defined, name)
                self.rename(obj)
                self._ns[name] = obj
                del self._todo[name]
