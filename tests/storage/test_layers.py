"""storage/ and admin/ import only the layers below them, counting imports inside functions.

Layers, lowest first: errors, runtime, metrics < transport < storage < locks <
cache < admin < cli; testing on top.
"""

import ast
from pathlib import Path

import pytest

import fleche_redis

PACKAGE = Path(fleche_redis.__file__).parent
RANK = {
    "errors": 0,
    "runtime": 0,
    "metrics": 0,
    "transport": 1,
    "storage": 2,
    "locks": 3,
    "cache": 4,
    "admin": 5,
    "cli": 6,
    "testing": 7,
}


def imported_layers(path: Path, package: Path = PACKAGE) -> set[str]:
    """Top-level parts of fleche_redis that *path* imports, anywhere in the file."""
    depth = len(path.relative_to(package).parts)  # 2 for fleche_redis/<layer>/<module>.py
    layers = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level == 1:
                layers.add(path.parent.name)
            elif node.level == depth:  # from .. import x / from ..x import y
                names = [node.module] if node.module else [a.name for a in node.names]
                layers.update(name.split(".")[0] for name in names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                parts = (name or "").split(".")
                if parts[0] == "fleche_redis" and len(parts) > 1:
                    layers.add(parts[1])
    return {layer for layer in layers if layer in RANK}


@pytest.mark.parametrize("layer", ["storage", "admin"])
def test_layer_imports_only_layers_below(layer):
    modules = sorted((PACKAGE / layer).glob("*.py"))
    assert modules
    upward = {
        f"{path.name} -> {other}"
        for path in modules
        for other in imported_layers(path)
        if RANK[other] > RANK[layer]
    }
    assert not upward


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "storage" / "fake.py"
    module.parent.mkdir()
    module.write_text(
        "from . import keys\n"
        "from ..transport.request import send\n"
        "import fleche_redis.cli\n"
        "def f():\n"
        "    from ..admin.maintenance import verify\n"
        "    from .. import cache\n"
    )
    assert imported_layers(module, tmp_path) == {"storage", "transport", "cli", "admin", "cache"}
