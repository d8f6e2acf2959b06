"""The package's floors run one way: training writes run folders and analysis reads them, and neither imports the
other; what both need (records/, meters.py, resources.py) imports neither."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "rppnets"
# floor -> the floors it must never import
FORBIDDEN = {
    "training": ("rppnets.analysis",),
    "analysis": ("rppnets.training",),
    "records": ("rppnets.training", "rppnets.analysis"),
    "meters.py": ("rppnets.training", "rppnets.analysis"),
    "resources.py": ("rppnets.training", "rppnets.analysis"),
    "layers": ("rppnets.training", "rppnets.analysis", "rppnets.records", "rppnets.data", "rppnets.models"),
    "data": ("rppnets.training", "rppnets.analysis", "rppnets.models", "rppnets.layers"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("floor", FORBIDDEN)
def test_a_floor_imports_nothing_above_it(floor):
    root = PACKAGE / floor
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    assert files
    climbing = [f"{path.relative_to(PACKAGE)} imports {name}" for path in files for name in imported_modules(path)
                if name.startswith(FORBIDDEN[floor])]
    assert not climbing, "\n".join(climbing)
