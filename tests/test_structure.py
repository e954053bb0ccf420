"""Structure: the import layering between rooms, no import cycles, pyproject's package list, and no
module loaded under a bare folder name. Parses every module with ``ast``: fast, nothing is run
(except the last test, which imports every module in a subprocess).

Rooms, left to right (a module imports only from its own room and rooms to its left):

    contract -> training.data -> training.models -> training.losses -> training.evaluation
             -> training.train -> training.cli -> training.search

``training.synthetic`` uses contract and training.data; ``export`` uses contract and training.models;
``serving`` and ``client`` use contract only; the top package ``avemo`` (avemo/cli.py, avemo/demo.py, ...)
may import anything.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

TRAINING_CHAIN = [
    "contract",
    "training.data",
    "training.models",
    "training.losses",
    "training.evaluation",
    "training.train",
    "training.cli",
]
ALLOWED: dict[str, set[str]] = {room: set(TRAINING_CHAIN[: i + 1]) for i, room in enumerate(TRAINING_CHAIN)}
# the training CLI sits at the end of training: it drives every training room, the corpus generator included
ALLOWED["training.cli"] |= {"training.synthetic"}
# the loss-weight search drives `avemo train` (its parser and config) from the far right end
ALLOWED["training.search"] = ALLOWED["training.cli"] | {"training.search"}
ALLOWED["training.synthetic"] = {"contract", "training.data", "training.synthetic"}
ALLOWED["export"] = {"contract", "training.models", "export"}
ALLOWED["serving"] = {"contract", "serving"}
ALLOWED["client"] = {"contract", "client"}
ROOMS = set(ALLOWED) | {"avemo"}
ALLOWED["avemo"] = set(ROOMS)

BARE_NAMES = ("training", "contract", "export", "serving", "client")  # folder names, installed as avemo.<name>
TORCH_FREE_ROOMS = ("contract", "serving", "client")  # the base install (client) and the server run without these
TORCH_LIKE = ("torch", "torchvision", "onnx", "onnxscript", "tensorboard", "wandb")
# modules that only load inside the Triton Python-backend stub (they import triton_python_backend_utils)
NEEDS_TRITON_STUB = {"avemo.serving.backend_model"}


@dataclass(frozen=True)
class Import:
    module: str  # importing module, e.g. avemo.training.train.loop
    target: str  # imported module as written / resolved, e.g. avemo.training.models.model
    line: int
    top_level: bool  # module level (False: inside a function or class body)

    def where(self, modules: dict[str, Path], root: Path) -> str:
        path = modules[self.module].relative_to(root)
        level = "module level" if self.top_level else "inside a function"
        return f"{path}:{self.line} ({level}) imports {self.target}"


# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def pyproject(repo_root) -> dict:
    return tomllib.loads((repo_root / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def modules(pyproject, repo_root) -> dict[str, Path]:
    """Every module of ours: installed name (avemo.<...>) -> source file, from pyproject's package-dir."""
    package_dir = pyproject["tool"]["setuptools"]["package-dir"]
    found: dict[str, Path] = {}
    for package, folder in package_dir.items():
        base = repo_root / folder
        assert (base / "__init__.py").is_file(), f"package-dir maps {package} to {folder}/, which has no __init__.py"
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            if "__pycache__" in rel.parts:
                continue
            # a sub-folder mapped separately (or not a package) is not part of this mapping
            folders = [base.joinpath(*rel.parts[: i + 1]) for i in range(len(rel.parts) - 1)]
            if any(not (folder / "__init__.py").is_file() for folder in folders):
                continue
            parts = [package, *rel.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            if name in found and found[name] != path:
                continue  # avemo/ never holds contract/ etc., but stay deterministic if it did
            found[name] = path
    assert "avemo.training.train.loop" in found and "avemo.contract.geometry" in found, sorted(found)
    return found


def room_of(module: str) -> str | None:
    """The room of an ``avemo.*`` module name (None for a module that is not ours)."""
    parts = module.split(".")
    if parts[0] != "avemo":
        return None
    if len(parts) == 1:
        return "avemo"
    if parts[1] in ("contract", "export", "serving", "client"):
        return parts[1]
    if parts[1] == "training":
        if len(parts) == 2 or parts[2] == "cli":
            return "training.cli"  # the package itself / its CLI: the right end of training
        room = f"training.{parts[2]}"
        return room if room in ALLOWED else None
    return "avemo"  # avemo.cli, avemo.demo, avemo.contract.options, avemo.__main__


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def parse_imports(modules: dict[str, Path]) -> list[Import]:
    """All imports of every module, module level and inside functions, resolved to module names.

    ``from X import y`` is an import of ``X.y`` when that is one of our modules, else of ``X``;
    relative imports are resolved against the importing module.
    """
    out: list[Import] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node

        def at_top(node: ast.AST, parents: dict[ast.AST, ast.AST] = parents) -> bool:
            p = parents.get(node)
            while p is not None:
                if isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
                    return False
                p = parents.get(p)
            return True

        package = name if _is_package(path) else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    out.append(Import(name, alias.name, node.lineno, at_top(node)))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    out.append(Import(name, full if full in modules else base, node.lineno, at_top(node)))
    return list(dict.fromkeys(out))  # `from x import a, b`: one entry per imported module


@pytest.fixture(scope="module")
def imports(modules) -> list[Import]:
    return parse_imports(modules)


# -------------------------------------------------------------------------------------------- tests


def test_every_module_is_parsed_and_has_a_room(modules, imports):
    assert {"avemo.cli", "avemo.training.cli", "avemo.serving.server", "avemo.client.predict"} <= set(modules)
    assert all(room_of(m) in ROOMS for m in modules), [m for m in modules if room_of(m) not in ROOMS]
    # the parser sees both kinds of import (the CLIs import their heavy modules inside run())
    assert any(i.top_level for i in imports) and any(not i.top_level for i in imports)


def test_import_layering(modules, imports, repo_root):
    """No module imports from a room to its right (module-level and function-level imports alike)."""
    bad = []
    for imp in imports:
        first = imp.target.split(".")[0]
        if first in BARE_NAMES:
            bad.append(f"{imp.where(modules, repo_root)}: bare folder name, import avemo.{imp.target}")
            continue
        if first != "avemo":
            continue  # third-party / standard library
        src, dst = room_of(imp.module), room_of(imp.target)
        if dst not in ALLOWED[src]:
            allowed = ", ".join(sorted(ALLOWED[src]))
            bad.append(f"{imp.where(modules, repo_root)}: room {src} -> room {dst} (allowed: {allowed})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_torch_free_rooms_never_import_torch(modules, imports, repo_root):
    """contract, serving and client run in the base install / the Triton stub: no torch, onnx, ... anywhere."""
    bad = [
        imp.where(modules, repo_root)
        for imp in imports
        if room_of(imp.module) in TORCH_FREE_ROOMS and imp.target.split(".")[0] in TORCH_LIKE
    ]
    assert not bad, "\n".join(bad)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative DFS, deterministic order)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = GREY
        while stack:
            node, children = stack[-1]
            for child in children:
                if colour.get(child, BLACK) == GREY:
                    return path[path.index(child) :] + [child]
                if colour.get(child) == WHITE:
                    colour[child] = GREY
                    path.append(child)
                    stack.append((child, iter(sorted(graph[child]))))
                    break
            else:
                colour[node] = BLACK
                path.pop()
                stack.pop()
    return None


def test_find_cycle_reports_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_our_modules(modules, imports):
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.target in modules and imp.target != imp.module:
            graph[imp.module].add(imp.target)
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_pyproject_packages_cover_every_package_and_expose_only_avemo(pyproject, modules, repo_root):
    setuptools_cfg = pyproject["tool"]["setuptools"]
    listed = setuptools_cfg["packages"]
    package_dir = setuptools_cfg["package-dir"]
    assert all(p == "avemo" or p.startswith("avemo.") for p in listed), listed
    assert all(p == "avemo" or p.startswith("avemo.") for p in package_dir), package_dir
    assert len(listed) == len(set(listed)), "duplicate entries in packages"
    # every folder with an __init__.py under the mapped folders is an installed package ...
    expected = {m for m, path in modules.items() if _is_package(path)}
    missing = sorted(expected - set(listed))
    assert not missing, f"packages in the source tree but not in pyproject's packages list: {missing}"
    # ... and every listed package is such a folder (no stale entries)
    stale = sorted(set(listed) - expected)
    assert not stale, f"pyproject lists packages with no folder/__init__.py: {stale}"


def _distribution_top_level(dist) -> dict[str, set[str]]:
    """The top-level import names an installed distribution puts on sys.path, by where they come from
    (each source that says something): ``top_level.txt`` (setuptools' own list, when written), the modules
    and packages its RECORD installs into site-packages (a regular install), and the import paths of its
    ``.pth`` files (an editable install: the setuptools finder's MAPPING, or folders added to sys.path)."""
    import ast

    found: dict[str, set[str]] = {}
    top_level = dist.read_text("top_level.txt")
    if top_level is not None:
        found["top_level.txt"] = set(top_level.split())
    files = list(dist.files or [])
    installed = set()
    for f in files:
        parts = f.parts
        if parts[0] in ("..", "__pycache__") or parts[0].endswith((".dist-info", ".egg-info", ".pth")):
            continue  # scripts, metadata, .pth (below)
        if parts[0].startswith("__editable__") and parts[0].endswith("_finder.py"):
            continue  # the editable finder: what it maps is read below
        name = parts[0].removesuffix(".py") if len(parts) == 1 else parts[0]
        if len(parts) > 1 or parts[0].endswith(".py") or ".cpython-" in parts[0]:
            installed.add(name.split(".")[0])
    if installed:
        found["RECORD"] = installed
    for pth in (f for f in files if f.name.endswith(".pth")):
        for line in Path(dist.locate_file(pth)).read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith(("import ", "import\t")):  # `import __editable___x_finder; ....install()`
                module = line.split()[1].rstrip(";")
                finder = next(f for f in files if f.name == f"{module}.py")
                tree = ast.parse(Path(dist.locate_file(finder)).read_text())
                for node in tree.body:
                    target: ast.expr | None = node.target if isinstance(node, ast.AnnAssign) else None
                    if isinstance(node, ast.Assign) and len(node.targets) == 1:
                        target = node.targets[0]
                    value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
                    if isinstance(target, ast.Name) and target.id in ("MAPPING", "NAMESPACES") and value is not None:
                        names = {k.split(".")[0] for k in ast.literal_eval(value)}
                        found.setdefault(f"{finder} MAPPING/NAMESPACES", set()).update(names)
            elif Path(line).is_dir():  # a folder put on sys.path: everything importable in it is exposed
                folder = Path(line)
                found[f"{pth}: {folder}"] = {
                    p.name.removesuffix(".py")
                    for p in folder.iterdir()
                    if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.stem.isidentifier())
                }
    return found


def test_installed_distribution_exposes_only_avemo(repo_root):
    import importlib.util
    from importlib.metadata import distributions

    # the installed one: an installer writes RECORD (not a checkout's avemo.egg-info, a build by-product)
    installed = [d for d in distributions(name="avemo") if d.read_text("RECORD") is not None]
    assert installed, "avemo is not installed (no distribution with a RECORD): pip install -e ."
    dist = installed[0]
    found = _distribution_top_level(dist)
    # at least one source besides top_level.txt, which a build backend may leave out: never an empty check
    assert set(found) - {"top_level.txt"}, f"no RECORD module and no .pth import path in {dist.files}"
    assert {k: v for k, v in found.items() if v != {"avemo"}} == {}, found
    spec = importlib.util.find_spec("avemo")  # and that one name is this checkout's package
    assert spec is not None and Path(spec.origin).resolve() == repo_root / "avemo" / "__init__.py", spec


_IMPORT_ALL = r"""
import importlib, json, pkgutil, sys, tomllib, traceback

packages = tomllib.loads(open(sys.argv[1], "rb").read().decode())["tool"]["setuptools"]["packages"]
skip = set(json.loads(sys.argv[2]))
imported, errors = [], {}

def load(name):
    if name in skip or name.endswith(".__main__"):  # __main__ would run the CLI
        return
    try:
        importlib.import_module(name)
        imported.append(name)
    except Exception:
        errors[name] = traceback.format_exc(limit=3)

for package in packages:
    load(package)
    mod = sys.modules.get(package)
    if mod is None:
        continue
    for info in pkgutil.walk_packages(mod.__path__, package + ".", onerror=lambda n: errors.setdefault(n, "walk")):
        load(info.name)

bare = {m: getattr(sys.modules[m], "__file__", None) for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[3])}
print(json.dumps({"imported": sorted(set(imported)), "errors": errors, "bare": bare}))
"""


def test_importing_every_module_loads_no_bare_folder_name(repo_root, modules, tmp_path):
    """Import every module of ours (pkgutil.walk_packages from each installed package); sys.modules then
    holds no module under a bare folder name (``training``, ``contract``, ...): that would be a second copy.
    Run from the checkout's root, where a stray ``import training`` WOULD succeed and show up here."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _IMPORT_ALL,
            str(repo_root / "pyproject.toml"),
            json.dumps(sorted(NEEDS_TRITON_STUB)),
            json.dumps(BARE_NAMES),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["errors"], "modules that failed to import:\n" + "\n".join(
        f"{k}:\n{v}" for k, v in result["errors"].items()
    )
    expected = {m for m in modules if m not in NEEDS_TRITON_STUB and not m.endswith(".__main__")}
    assert set(result["imported"]) == expected, {
        "not imported": sorted(expected - set(result["imported"])),
        "unexpected": sorted(set(result["imported"]) - expected),
    }
    assert not result["bare"], f"modules loaded under a bare folder name: {result['bare']}"
