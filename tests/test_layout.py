"""The tree's shape, as the README's module table states it: the imports of every
module (function-level ones included) form no circle and never climb from a lower
wing to a higher one, and a function-level import is only of a heavy library (or
of a module that imports one), never a way to hide a circle."""
import ast
import glob
import json
import os

from helpers import RAY_FIXTURES, ROOT_DIR, run_code

# Wings from the bottom up: a module imports only from its own wing or those below.
WINGS = [
    ("plumbing", ["utils", "cli", "records", "provenance", "outputs"]),
    ("data", ["derived", "features", "rootio", "rootstream", "rootwrite", "dataset"]),
    ("measures", ["metrics", "kinematics", "compare", "diagnostics", "suggest"]),
    ("model", ["architecture", "models", "trainer", "baseline", "cpp_export", "artifacts",
               "scoring", "inputs", "streaming"]),
    ("search", ["search_folder", "search_log", "search", "many_files"]),
    ("figures", ["drawing", "plots", "diagnostic_plots"]),
    ("analysis", ["evaluation"]),
    ("report", ["results_file", "pages", "report", "training_report"]),
    ("entry points", ["make_sample", "make_dataset", "training", "inference"]),
]
HEAVY = {"ROOT", "ray", "torch", "torchvision", "matplotlib", "mplhep", "onnx",
         "onnxruntime", "onnx2torch", "sklearn", "scipy", "cppyy"}


def _imports():
    """{module: [(imported top-level name, line, inside a function)]}"""
    found = {}
    for path in sorted(glob.glob(os.path.join(ROOT_DIR, "*.py"))):
        name = os.path.basename(path)[:-3]
        tree = ast.parse(open(path).read())
        inner = {id(n) for f in ast.walk(tree)
                 if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
        rows = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module.split(".")[0]]
            else:
                continue
            rows += [(t, node.lineno, id(node) in inner) for t in targets]
        found[name] = rows
    return found


def _heavy_modules(found):
    """Project modules that import a heavy library at module level, directly or
    through another project module."""
    heavy = set()
    while True:
        more = {m for m, rows in found.items() if m not in heavy and any(
            not inner and (t in HEAVY or t in heavy) for t, _, inner in rows)}
        if not more:
            return heavy
        heavy |= more


def test_every_module_has_a_wing():
    found = _imports()
    placed = [m for _, mods in WINGS for m in mods]
    assert len(placed) == len(set(placed))
    assert sorted(set(found) - set(placed)) == [], "modules without a wing"
    assert sorted(set(placed) - set(found)) == [], "wings name missing modules"


def test_no_circle_and_no_import_climbs():
    found = _imports()
    rank = {m: i for i, (_, mods) in enumerate(WINGS) for m in mods}
    climbs = [f"{m}:{line} imports {t}" for m, rows in found.items()
              for t, line, _ in rows if t in rank and t != m and rank[t] > rank[m]]
    assert climbs == []
    graph = {m: {t for t, _, _ in rows if t in found and t != m} for m, rows in found.items()}
    state, circles = {}, []

    def visit(m, path):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                circles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert circles == []


def test_function_level_imports_are_of_heavy_libraries_only():
    found = _imports()
    heavy = _heavy_modules(found)
    light = [f"{m}:{line} imports {t} inside a function" for m, rows in found.items()
             for t, line, inner in rows
             if inner and t not in HEAVY and t not in heavy and t != "__future__"]
    assert light == []


_COLLECTOR = """
import json, os
import pytest

DESELECTED = {}


def _record(items):
    return {i.nodeid: [i.get_closest_marker("ray") is not None, list(i.fixturenames)]
            for i in items}


def pytest_deselected(items):  # what -m leaves out
    DESELECTED.update(_record(items))


@pytest.hookimpl(trylast=True)  # after conftest has marked the users of a search, and -m
def pytest_collection_modifyitems(config, items):
    with open(os.environ["GHOST_COLLECTED"], "w") as f:
        json.dump({"selected": _record(items), "deselected": DESELECTED}, f)
"""


def test_the_quick_loop_starts_no_search(tmp_path):
    """README ("Tests"): `pytest -m "not ray"` leaves out every test that starts Ray,
    itself (marked where it is defined) or through a fixture (marked by conftest);
    `-m ray` and `-m "not ray"` split the suite.  One collection with `-m "not ray"`:
    what it lists, and every test with its markers (the `ray` marker as conftest
    leaves it) and fixtures, as -m selected or deselected it."""
    (tmp_path / "ghost_collector.py").write_text(_COLLECTOR)
    env = {**os.environ, "GHOST_COLLECTED": str(tmp_path / "all.json")}
    # `python -m pytest ...`, as a child of the warm fork server (its imports paid)
    pytest_main = f"import sys, pytest\nsys.path.insert(0, {str(tmp_path)!r})\n" \
                  "sys.exit(pytest.main(sys.argv[1:]))\n"
    proc = run_code(pytest_main, "-q", "-p", "no:xdist", "--collect-only", "-p",
                    "ghost_collector", "-m", "not ray", "tests", cwd=ROOT_DIR, timeout=300,
                    env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    quick = {line for line in proc.stdout.splitlines() if "::" in line}
    seen = json.loads((tmp_path / "all.json").read_text())
    collected = {**seen["selected"], **seen["deselected"]}
    assert set(seen["selected"]) == quick
    searches = {t for t, (ray, _) in collected.items() if ray}
    assert len(quick) > 500 and len(searches) > 20
    assert set(seen["deselected"]) == searches  # -m "not ray" leaves out the marked, only
    assert quick | searches == set(collected) and not quick & searches
    # the quick tests that use a fixture starting a search (directly or through another)
    starting = [t for t in quick if set(collected[t][1]) & RAY_FIXTURES]
    assert not starting


def test_no_merge_conflict_markers_are_left_in_the_repository():
    """A merge left `<<<<<<< HEAD` ... `>>>>>>> branch` in the README's module table
    once: no text file of the repository holds such a line."""
    import re
    marker = re.compile(r"^(<{7} |={7}$|>{7} )", re.M)
    found = []
    for folder, dirs, files in os.walk(ROOT_DIR):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        for name in files:
            if name.endswith((".py", ".md", ".txt", ".toml", ".sh", ".cfg", ".yml")) or \
                    name == "Makefile":
                path = os.path.join(folder, name)
                with open(path, errors="replace") as f:
                    found += [f"{os.path.relpath(path, ROOT_DIR)}: {m.group(0)}"
                              for m in marker.finditer(f.read())]
    assert found == []
