"""The import rules of common/, read from the source with ``ast`` (imports inside functions
included): only ``cli`` imports the windows, only ``flower`` imports Flower's modules, the
windows and Flower import neither ``cli`` nor each other, the windows' controllers and views
import no Kivy, and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMON = ROOT / "common"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in COMMON.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The module of common/ that ``name`` (a module, or a name in one) stands for."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """The modules of common/ that ``module`` imports anywhere in its source."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                base = ".".join(
                    [
                        *package.split(".")[: len(package.split(".")) - node.level + 1],
                        *filter(None, [node.module]),
                    ]
                )
            # ``from package import name`` imports the submodule ``name`` if there is one
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(filter(None, map(resolve, names)))
    return found - {module}


GRAPH = {module: imports_of(module) for module in MODULES}

# The windows' plain-Python half, which the tests drive without a display: the controllers,
# what each window shows, the setup fields' table, the sizes.
PLAIN_GUI = {
    "common.gui.sizes",
    "common.gui.controller",
    "common.gui.server_controller",
    "common.gui.server_view",
    "common.gui.setup_fields",
    "common.gui.client_controller",
    "common.gui.client_view",
}


def packages_of(module: str) -> set[str]:
    """The top-level packages ``module`` imports anywhere in its source (relative: none)."""
    path = MODULES[module]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.partition(".")[0])
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def importers_of(package: str) -> set[str]:
    return {
        module
        for module, imported in GRAPH.items()
        if not within(module, package) and any(within(name, package) for name in imported)
    }


def test_the_graph_is_read():
    assert "common.app" in GRAPH["common.cli"] and "common.gui" in GRAPH["common.cli"]
    assert "common.server" in GRAPH["common.app"]


def test_only_cli_imports_the_windows():
    assert importers_of("common.gui") == {"common.cli"}


def test_the_controllers_import_neither_kivy_nor_the_window_modules():
    assert PLAIN_GUI <= MODULES.keys()
    for module in PLAIN_GUI:
        assert "kivy" not in packages_of(module), module
        window_modules = {name for name in GRAPH[module] if within(name, "common.gui")}
        assert window_modules <= PLAIN_GUI, module


def test_nothing_outside_flower_imports_it():
    assert importers_of("common.flower") == set()


def test_the_windows_and_flower_import_neither_cli_nor_each_other():
    for package, others in (
        ("common.gui", ("common.cli", "common.flower")),
        ("common.flower", ("common.cli", "common.gui")),
    ):
        for module, imported in GRAPH.items():
            if within(module, package):
                assert not {
                    name for name in imported if any(within(name, other) for other in others)
                }, module


def test_no_import_cycle():
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError(
                "import cycle: " + " -> ".join(path[path.index(module) :] + [module])
            )
        if module in done:
            return
        for imported in sorted(GRAPH[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])
