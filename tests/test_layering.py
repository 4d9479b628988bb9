"""The layering of docs/design.md, read from the source: which module may import which."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "qualiclip_metric"
#: Modules built on the core, which the core must never import.
OUTER = {
    "cli",
    "__main__",
    "torchmetrics",
    "loss",
    "pyiqa_plugin",
    "evaluation",
    "plotting",
    "datasets",
    "report",
    "ray",
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def imported_names(path: Path) -> set[str]:
    """``module.name`` of every ``from qualiclip_metric... import name`` in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qualiclip_metric"):
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def is_private(part: str) -> bool:
    return part.startswith("_") and not part.endswith("__")


CORE = sorted(path for path in PACKAGE.glob("*.py") if path.stem not in OUTER | {"__init__"})


#: The command line: one module per command, and what they share.
CLI = PACKAGE / "cli"
CLI_SHARED = {"__init__", "__main__", "common"}


def test_the_split_covers_every_module():
    assert {path.stem for path in CORE} >= {"model", "weights", "runtimes", "export", "machine", "checkpoint"}
    assert all((PACKAGE / f"{name}.py").is_file() or (PACKAGE / name / "__init__.py").is_file() for name in OUTER)
    assert not (PACKAGE / "cli.py").exists()  # a module would shadow the package


@pytest.mark.parametrize("path", CORE, ids=lambda path: path.stem)
def test_the_core_never_imports_the_cli_integrations_evaluation_or_training(path: Path):
    forbidden = {f"qualiclip_metric.{name}" for name in OUTER}
    imports = imported_modules(path)
    outer = {name for name in imports if any(name == bad or name.startswith(f"{bad}.") for bad in forbidden)}
    assert not outer, f"{path.name} imports {sorted(outer)}"
    assert not {name for name in imports if name.split(".")[0] in ("training", "hub", "benchmarks")}


def test_the_library_never_imports_training_or_hub():
    for path in PACKAGE.rglob("*.py"):
        assert not {name for name in imported_modules(path) if name.split(".")[0] in ("training", "hub")}, path


@pytest.mark.parametrize("folder", ["training", "hub"])
def test_training_and_hub_use_the_public_api(folder: str):
    """No private names and no CLI internals: what they use, a user can use."""
    for path in (ROOT / folder).rglob("*.py"):
        names = imported_names(path)
        private = {name for name in names if any(is_private(part) for part in name.split(".")[1:])}
        assert not private, f"{path.relative_to(ROOT)} imports private names {sorted(private)}"
        assert not {name for name in imported_modules(path) if name.startswith("qualiclip_metric.cli")}, path


@pytest.mark.parametrize(
    "path", sorted(p for p in CLI.glob("*.py") if p.stem not in ("__init__", "__main__")), ids=lambda path: path.stem
)
def test_each_command_uses_only_the_shared_cli_module(path: Path):
    """A command's module imports no other command's: what two commands need lives in cli/common.py."""
    commands = {f"qualiclip_metric.cli.{p.stem}" for p in CLI.glob("*.py") if p.stem not in CLI_SHARED}
    assert len(commands) >= 5  # score, evaluate, download, export, info
    others = commands - {f"qualiclip_metric.cli.{path.stem}"}
    imports = imported_modules(path)
    used = {name for name in imports if any(name == other or name.startswith(f"{other}.") for other in others)}
    assert not used, f"cli/{path.name} imports {sorted(used)}"
