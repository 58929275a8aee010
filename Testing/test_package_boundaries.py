"""The runtime package (MedDiffusionExtension, what CMake installs into Slicer) stays a plain library: it imports
neither Slicer's Python (slicer, qt, ctk, vtk), nor the training package, nor the training-only dependencies; its
modules import each other without cycles; and CMake installs it without the training package.

Imports are read from the source with `ast`, so nothing is imported here and a lazy import inside a function
counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "MedDiffusionExtension"
# Slicer's own Python, the tooling, and the dependencies only the training extras install.
FORBIDDEN = {"slicer", "qt", "ctk", "vtk", "PythonQt", "MRMLCorePython", "MedDiffusionLib", "SampleData",
             "training", "nilearn", "skimage", "monai", "diffusers", "tensorboard"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _imports(module: str, module_level_only: bool) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for each import statement of `module`; relative imports are
    resolved to absolute names. module_level_only skips function bodies and `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"), filename=str(MODULES[module]))
    package = module if _is_package(module) else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if module_level_only and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(ast.Module(body=child.orelse, type_ignores=[]))
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, [], child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module
                found.append((target, [alias.name for alias in child.names], child.lineno))
            visit(child)

    visit(tree)
    return found


def test_the_walk_sees_the_whole_runtime_package():
    assert f"{PACKAGE}.cli" in MODULES and f"{PACKAGE}.volume.io" in MODULES
    # `meddiffusion bench` measures the user's own machine, so the benchmark is part of the runtime package; the
    # phantom generators are not.
    assert not any(name.startswith(f"{PACKAGE}.data") for name in MODULES), \
        "phantom generators belong to the training package"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_runtime_module_imports_neither_slicer_nor_training(module):
    offending = [f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}"
                 for target, _, line in _imports(module, module_level_only=False)
                 if target.split(".")[0] in FORBIDDEN]
    assert not offending, "\n".join(offending)


def _loaded_by(module: str, target: str, names: list[str]) -> set[str]:
    """The package modules whose code an import statement in `module` may run (or need finished)."""
    submodules = {f"{target}.{name}" for name in names if f"{target}.{name}" in MODULES}
    loads = set(submodules)
    if not names or len(submodules) < len(names):  # `import pkg` or a name defined in pkg/__init__.py
        loads.add(target)
    for loaded in list(loads):  # loading a.b.c runs a and a.b first, except the packages `module` is inside of
        parts = loaded.split(".")
        loads.update(".".join(parts[:i]) for i in range(1, len(parts))
                     if not (module + ".").startswith(".".join(parts[:i]) + "."))
    return {name for name in loads if name in MODULES and name != module}


def test_loaded_by_follows_pythons_import_semantics():
    volume, io = f"{PACKAGE}.volume", f"{PACKAGE}.volume.io"
    assert _loaded_by(io, volume, ["volume"]) == {f"{volume}.volume"}  # sibling submodule of its own package
    assert _loaded_by(f"{PACKAGE}.demo", volume, ["read_volume"]) == {volume}
    assert _loaded_by(f"{PACKAGE}.demo", f"{volume}.engine", ["RunOptions"]) == {volume, f"{volume}.engine"}


def _import_graph(module_level_only: bool) -> dict[str, set[str]]:
    graph = {module: set() for module in MODULES}
    for module in MODULES:
        for target, names, _ in _imports(module, module_level_only):
            if target.split(".")[0] == PACKAGE:
                graph[module] |= _loaded_by(module, target, names)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_and_ignores_what_it_should():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_runtime_package_has_no_module_level_import_cycles():
    cycle = _find_cycle(_import_graph(module_level_only=True))
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_runtime_modules_do_not_import_each_other_in_a_circle_even_lazily():
    """A cycle closed only by imports inside functions still loads, but the modules cannot be understood or moved
    apart one at a time (cli -> commands -> bench -> cli was one)."""
    cycle = _find_cycle(_import_graph(module_level_only=False))
    assert cycle is None, "import cycle (counting imports inside functions): " + " -> ".join(cycle)


def _installed_directories() -> list[str]:
    """The DIRECTORY arguments of every install()/file(COPY|INSTALL) in the project's CMakeLists.txt files."""
    found = []
    for cmake in [ROOT / "CMakeLists.txt", *sorted((ROOT / "Modules").rglob("CMakeLists.txt"))]:
        text = re.sub(r"#[^\n]*", "", cmake.read_text(encoding="utf-8"))
        pattern = r"\b(?:install\s*\(\s*DIRECTORY|file\s*\(\s*(?:COPY|INSTALL))\s+(.*?)\s+DESTINATION"
        for match in re.finditer(pattern, text, re.S | re.I):
            found.extend(re.sub(r"^\$\{[^}]+\}/", "", word.strip('"')) for word in match.group(1).split())
    return found


def test_cmake_installs_the_runtime_package_and_not_the_training_package():
    directories = _installed_directories()
    assert any(Path(d).name == PACKAGE for d in directories), directories
    for directory in directories:
        assert "training" not in Path(directory).parts, f"CMake ships {directory}"
    assert not (ROOT / PACKAGE / "training").exists() and not (ROOT / PACKAGE / "data").exists()
