"""The house rules, checked over the source with ``ast``: what may import what, no import
cycles, and a README module map that matches the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "notifier"

# The notebook's side of the house: what a kernel imports. It never sends mail itself,
# never touches the ledger and knows nothing of runs, the daemon or the command line.
KERNEL_SIDE = ("notifier.notebook.report", "notifier.notebook.bundle", "notifier.report")
NOT_FOR_THE_KERNEL = (
    "notifier.mail.transport",
    "notifier.delivery",
    "notifier.ledger",
    "notifier.runs",
    "notifier.daemon",
    "notifier.cli",
)
# The email model: transports import it, never the other way round (Django's core/mail).
MODEL = (
    "notifier.mail.model",
    "notifier.mail.parts",
    "notifier.mail.tables",
    "notifier.mail.htmltext",
    "notifier.mail.preview",
)
# send_test() is the one place the kernel side sends: a copy to you, from JupyterLab.
SENDS_A_TEST_COPY = {("notifier.notebook.interactive", "notifier.mail.transport")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(name: str) -> dict[str, bool]:
    """Modules of notifier that ``name`` imports -> True when at module level."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in MODULES
                else node.module
                for alias in node.names
            ]
        for target in targets:
            if target.startswith("notifier") and target != name:
                found[target] = found.get(target, False) or id(node) in top_level
    return found


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_every_module_is_in_a_package_that_says_what_it_is_for() -> None:
    for name, path in MODULES.items():
        assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), name


def test_the_kernel_side_imports_no_transport_ledger_or_run_machinery() -> None:
    for name in MODULES:
        if not within(name, KERNEL_SIDE):
            continue
        bad = [t for t in imported(name) if within(t, NOT_FOR_THE_KERNEL)]
        assert bad == [], f"{name} imports {bad}"
    for name in MODULES:
        if name.startswith("notifier.notebook.") and name != "notifier.notebook.interactive":
            bad = [t for t in imported(name) if within(t, ("notifier.mail.transport",))]
            assert bad == [], f"{name} imports {bad}"
    lazy = {
        (name, target)
        for name in MODULES
        if name == "notifier.notebook.interactive"
        for target, top in imported(name).items()
        if within(target, ("notifier.mail.transport",))
    }
    assert lazy <= SENDS_A_TEST_COPY


def test_the_email_model_imports_nothing_from_transports() -> None:
    for name in MODEL:
        bad = [t for t in imported(name) if within(t, ("notifier.mail.transport",))]
        assert bad == [], f"{name} imports {bad}"


def test_nothing_imports_the_command_line() -> None:
    for name in MODULES:
        if within(name, ("notifier.cli",)) or name == "notifier.__main__":
            continue
        bad = [t for t in imported(name) if within(t, ("notifier.cli",))]
        assert bad == [], f"{name} imports {bad}"


def test_there_are_no_import_cycles() -> None:
    graph = {name: set(imported(name)) & set(MODULES) for name in MODULES}
    for target in graph.values():  # importing a package's module imports the package
        for module in list(target):
            parent = module.rsplit(".", 1)[0]
            if parent in MODULES and parent != "notifier":
                target.add(parent)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            # a package's __init__ re-exporting its own modules is not a cycle
            outside = {m for m in component if not any(m.startswith(c + ".") for c in component)}
            if len(component) > 1 and len(outside) > 1:
                cycles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    assert cycles == []


MAP_START = "<!-- module map: kept in step with the tree by tests/test_layout.py -->"


def test_the_readme_module_map_matches_the_tree() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    if MAP_START not in readme:
        pytest.fail("README.md has no module map section")
    block = readme.split(MAP_START, 1)[1].split("```", 2)[1]
    listed = set(re.findall(r"(notifier/[\w/]+\.py|notifier/[\w/]+/)", block))
    files = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")}
    files = {f for f in files if not f.endswith("__init__.py")}
    packages = {
        p.parent.relative_to(ROOT).as_posix() + "/"
        for p in PACKAGE.rglob("__init__.py")
        if p.parent != PACKAGE
    }
    assert listed == files | packages
