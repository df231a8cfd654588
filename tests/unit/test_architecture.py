"""The layout holds: imports go one way between the stages, every import names the tfwarden
namespace, and every exception belongs to the one tree in core/errors.py."""

from __future__ import annotations

import ast
import builtins
import inspect
import re
from pathlib import Path

import pytest

from tests.helpers import REPO
from tfwarden.core import errors

STAGES = ("core", "serving", "probes", "detectors", "policies", "lifecycle", "optimizers",
          "daemon")
# Who may import whom (besides itself); docs/architecture.md draws the same picture.
ALLOWED = {
    "core": set(),
    "serving": {"core"},
    "probes": {"core", "serving"},
    "detectors": {"core", "serving"},
    "policies": {"core"},
    "optimizers": {"core"},
    "lifecycle": {"core", "policies", "optimizers"},
    "daemon": set(STAGES),
}
BUILTIN_EXCEPTIONS = {name for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)}


def modules() -> list[tuple[str, Path, ast.Module]]:
    return [(stage, path, ast.parse(path.read_text(), str(path)))
            for stage in STAGES for path in sorted((REPO / stage).rglob("*.py"))]


def imported(tree: ast.Module) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def test_stages_import_each_other_one_way_only() -> None:
    wrong = []
    for stage, path, tree in modules():
        for line, module in imported(tree):
            parts = module.split(".")
            if parts[0] == "tfwarden" and len(parts) > 1 and parts[1] != stage and \
                    parts[1] not in ALLOWED[stage]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert wrong == []


def test_every_import_of_a_stage_names_the_tfwarden_namespace() -> None:
    bare = [f"{path.relative_to(REPO)}:{line} imports {module}"
            for _, path, tree in modules() for line, module in imported(tree)
            if module.split(".")[0] in STAGES]
    assert bare == []


def test_every_exception_class_is_defined_in_core_errors() -> None:
    defined_there = {name for name, value in vars(errors).items()
                     if inspect.isclass(value) and issubclass(value, BaseException)}
    elsewhere = []
    for _, path, tree in modules():
        if path == REPO / "core" / "errors.py":
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute)
                     else "" for b in node.bases}
            if bases & (BUILTIN_EXCEPTIONS | defined_there):
                elsewhere.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert elsewhere == []


@pytest.mark.parametrize("name", sorted(
    name for name, value in vars(errors).items()
    if inspect.isclass(value) and issubclass(value, BaseException)
    and value.__module__ == errors.__name__))
def test_every_exception_derives_from_the_tree_and_is_drawn_in_its_docstring(name: str) -> None:
    assert issubclass(getattr(errors, name), errors.TfwardenError)
    assert re.search(rf"^\s*(\W+ )?{name}\b", errors.__doc__ or "", re.MULTILINE)
