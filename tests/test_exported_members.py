"""Each module's exported names (``__all__``): sorted, no repeats, every one importable, and a
package exports every public class and function its ``__init__`` brings in (as httpx's
tests/test_exported_members.py checks its package)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from types import ModuleType

import pytest

import perwatt


def _modules() -> list[str]:
    names = ["perwatt"]
    for info in pkgutil.walk_packages(perwatt.__path__, "perwatt."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return sorted(names)


MODULES = _modules()


def _sort_key(name: str) -> tuple[int, list[tuple[int, str]]]:
    """ruff's (RUF022) order: CONSTANTS, then Classes, then functions, each in natural order
    (digits by value: ``site_96mw`` before ``site_250mw``)."""
    parts = [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", name) if p]
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, parts)


def _load(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:  # an optional dependency (torch, starlette) is not installed
        pytest.skip(f"{name}: {e}")


def test_every_package_declares_its_exports() -> None:
    packages = [m for m in MODULES if hasattr(_load(m), "__path__")]
    assert "perwatt.meter" in packages  # guards the walk itself
    # cli is a command, not an API: it exports nothing
    missing = [p for p in packages if p != "perwatt.cli" and not hasattr(_load(p), "__all__")]
    assert not missing, f"packages without __all__: {missing}"


@pytest.mark.parametrize("name", MODULES)
def test_exports_are_sorted_unique_and_importable(name: str) -> None:
    module = _load(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        return
    assert list(exported) == sorted(exported, key=_sort_key), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    absent = [n for n in exported if not hasattr(module, n)]
    assert not absent, f"{name}.__all__ lists names it does not have: {absent}"


@pytest.mark.parametrize("name", [m for m in MODULES if m.count(".") <= 1])
def test_a_package_exports_what_it_imports(name: str) -> None:
    """A public class or function a package's ``__init__`` imports from perwatt is exported."""
    module = _load(name)
    exported = set(getattr(module, "__all__", ()))
    if not hasattr(module, "__path__") or name == "perwatt.cli":
        return
    unlisted = [
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and (inspect.isclass(v) or inspect.isfunction(v))
        and getattr(v, "__module__", "").startswith("perwatt")
        and n not in exported
    ]
    assert not unlisted, f"{name} imports but does not export: {sorted(unlisted)}"
