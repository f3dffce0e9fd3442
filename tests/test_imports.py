"""The project's imports run one way: no circle between modules, no import of the project's own code placed inside a
function (optional third-party packages alone stay lazy), and the packages of ``common/`` import only downward:

    scripts -> train, predict -> cli -> models, report -> data -> parallel -> errors, files, limits

(``common/__init__.py`` says the same in words; ghost_net.py imports torch only.) The graph is read with ``ast``
from the source files, so nothing is imported to build it.
"""
from __future__ import annotations

import ast
import os

import pytest

from tests.conftest import ROOT

# The packages of common/ by floor, from the top; a module may import its own package and any floor below.
FLOORS = (("train", "predict"), ("cli",), ("models", "report"), ("data",), ("parallel",), ("ground",))
# the ground floor: modules of common/, importing only each other
GROUND = ("errors", "files", "limits", "schema", "terminal")
FLOOR_OF = {package: level for level, names in enumerate(FLOORS) for package in names}
MODEL_FILES = ("ghost_net", "ghost_net_v23")  # the model files: torch only (V2/V3 reuse v1's parts); common/ may import
SKIP = {".git", "tests", "__pycache__", "docs"}


def project_files() -> dict[str, str]:
    """Dotted module name -> path of every Python file of the project outside tests/."""
    found = {}
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP and not d.startswith("."))
        for name in names:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, ".")
                found[rel.removesuffix(".__init__")] = os.path.join(folder, name)
    return found


def imported(node: ast.AST, modules: dict[str, str]) -> list[str]:
    """The project modules that one import statement loads (``from common.data import loaders`` loads
    ``common.data.loaders``; ``from common.data.loaders import X`` loads ``common.data.loaders``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
        return []
    subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
    return subs or ([node.module] if node.module in modules else [])


def graph() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> the project modules it imports at its top level, imports of project code inside functions)."""
    modules, edges, nested = project_files(), {}, []
    for name, path in modules.items():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        edges[name] = {m for node in tree.body for m in imported(node, modules)}
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside = [m for node in ast.walk(func) for m in imported(node, modules)]
                nested += [f"{name}.{func.name} imports {m}" for m in inside]
    return edges, nested


def find_circle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None (depth-first search, colouring visited modules)."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    return next((c for n in sorted(edges) if n not in state and (c := visit(n, [n]))), None)


def package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "common" or len(parts) == 1:
        return None
    return "ground" if parts[1] in GROUND else parts[1]


def test_the_circle_finder_finds_a_circle_and_only_one():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None


def test_no_module_imports_in_a_circle():
    edges, _ = graph()
    assert len(edges) > 50, "the project's files were not found"
    assert find_circle(edges) is None


def test_no_project_import_hides_inside_a_function():
    _, nested = graph()
    assert nested == []


def test_common_imports_only_downward_and_never_a_script():
    edges, _ = graph()
    wrong = []
    for module, targets in edges.items():
        here = package_of(module)
        for target in targets:
            there = package_of(target)
            if module.startswith("common") and there is None and target not in MODEL_FILES:
                wrong.append(f"{module} imports {target}, which is no part of common/")
            elif here and there and here != there and FLOOR_OF[there] <= FLOOR_OF[here]:
                wrong.append(f"{module} ({here}) imports {target} ({there}), which is not below it")
    assert wrong == []


def test_ghost_net_and_scripts_keep_their_side():
    edges, _ = graph()
    assert edges["ghost_net"] == set()  # the model file imports torch only
    assert edges["ghost_net_v23"] == {"ghost_net"}  # its sibling imports torch and ghost_net only
    scripts = {m for m in edges if "." not in m and m != "common"}
    assert {"train_main", "test", "classify_test_data", "network", "export", "ghost_net"} <= scripts
    assert not any(edges[s] & scripts - set(MODEL_FILES) for s in scripts), "a script imports another script"
    predicting = [m for m in edges if package_of(m) == "predict"] + ["test", "classify_test_data", "export"]
    assert not any(package_of(t) == "train" for m in predicting for t in edges[m]), "prediction imports training"


@pytest.mark.parametrize("package", sorted(set(FLOOR_OF) - {"ground"}))
def test_each_package_says_what_it_holds_and_may_import(package):
    path = os.path.join(ROOT, "common", package, "__init__.py")
    doc = ast.get_docstring(ast.parse(open(path).read()))
    assert doc and "May import:" in doc
