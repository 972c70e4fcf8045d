"""The package's layering rule, checked on the source (ast) and on a fresh interpreter.

The losses, metrics and renderer never import models, data or train (nor evaluate); models never
import data, train or evaluate; radocc.occ3d (the Occ3D facts) imports nothing from radocc. An
import counts wherever it is written (inside functions too) and through every radocc module it
reaches, so a lazy import of a module that imports the data layer breaks the rule as well.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]

LOW_LEVEL = ("radocc.render", "radocc.render_inputs", "radocc.render_reference", "radocc.rays",
             "radocc.losses", "radocc.metrics", "radocc.raycast", "radocc.occ3d", "radocc.distill",
             "radocc.map_losses", "radocc.map_metrics")
LOW_LEVEL_FORBIDDEN = ("radocc.models", "radocc.data", "radocc.train", "radocc.evaluate")
MODELS_FORBIDDEN = ("radocc.data", "radocc.train", "radocc.evaluate")


class Import(NamedTuple):
    """One import statement's target, as a dotted name (``from a import b`` gives ``a.b``)."""

    path: str
    line: int
    target: str


def _module_name(relpath: str) -> str:
    parts = relpath[:-len(".py")].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(relpath: str, source: str) -> list[Import]:
    """Every import in a file (at any depth), relative imports resolved to absolute names.

    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a submodule: ``from radocc import
    data`` imports radocc.data).
    """
    module = _module_name(relpath)
    package = module if relpath.endswith("__init__.py") else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source, filename=relpath)):
        if isinstance(node, ast.Import):
            found += [Import(relpath, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.append(Import(relpath, node.lineno, base))
            found += [Import(relpath, node.lineno, f"{base}.{alias.name}")
                      for alias in node.names if alias.name != "*"]
    return found


def _within(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def violations(sources: dict[str, str], rules: dict[str, tuple[str, ...]]) -> list[str]:
    """Imports that break ``rules`` ({module: forbidden prefixes}), followed through radocc.

    sources: {path relative to the repository ("radocc/x.py"): source text}, the whole package.
    Returns one line per offending import statement: the shortest chain of imports from a checked
    module to it, each as ``file:line imports target``.
    """
    modules = {_module_name(p): p for p in sources}
    imports = {_module_name(p): imports_of(p, s) for p, s in sources.items()}
    # Each offending import statement once, by its shortest chain from a checked module.
    found: dict[tuple[str, int], tuple[Import, ...]] = {}
    for start, forbidden in sorted(rules.items()):
        # Breadth-first over radocc modules; `via` holds the import chain that reached each one.
        via: dict[str, tuple[Import, ...]] = {start: ()}
        queue = deque([start])
        while queue:
            module = queue.popleft()
            for imp in imports[module]:
                chain = via[module] + (imp,)
                if _within(imp.target, forbidden):
                    key = (imp.path, imp.line)
                    if key not in found or len(chain) < len(found[key]):
                        found[key] = chain
                    continue
                # Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c.
                parts = imp.target.split(".")
                for n in range(1, len(parts) + 1):
                    reached = ".".join(parts[:n])
                    if reached in modules and reached not in via:
                        via[reached] = chain
                        queue.append(reached)
    return sorted(" -> ".join(f"{i.path}:{i.line} imports {i.target}" for i in chain)
                  for chain in found.values())


def package_sources() -> dict[str, str]:
    return {p.relative_to(REPO).as_posix(): p.read_text() for p in sorted((REPO / "radocc").rglob("*.py"))}


def layering_rules(sources: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """The rule for each module it covers: the low-level modules and every radocc.models module."""
    names = {_module_name(p) for p in sources}
    missing = [m for m in LOW_LEVEL if m not in names]
    assert not missing, f"layering rule names modules that do not exist: {missing}; update LOW_LEVEL"
    rules = {m: LOW_LEVEL_FORBIDDEN for m in LOW_LEVEL}
    rules.update({m: MODELS_FORBIDDEN for m in names if _within(m, ("radocc.models",))})
    return rules


def test_package_keeps_the_layering_rule() -> None:
    sources = package_sources()
    rules = layering_rules(sources)
    assert sum(m.startswith("radocc.models") for m in rules) >= 5, sorted(rules)
    bad = violations(sources, rules)
    assert not bad, ("layering rule broken (losses/metrics/renderer never import models, data, "
                     "train or evaluate; models never import data, train or evaluate):\n  "
                     + "\n  ".join(bad))


def test_occ3d_facts_import_nothing_from_radocc() -> None:
    relpath = "radocc/occ3d.py"
    found = [i for i in imports_of(relpath, (REPO / relpath).read_text()) if _within(i.target, ("radocc",))]
    assert not found, f"radocc.occ3d must stay a leaf: {found}"


def test_checker_catches_direct_lazy_relative_and_indirect_imports() -> None:
    sources = {
        "radocc/__init__.py": "",
        "radocc/metrics.py": "import torch\nfrom radocc.occ3d import FREE\n"
                             "def f():\n    from radocc.data import occ3d\n",
        "radocc/losses.py": "from . import helper\n",
        "radocc/helper.py": "def g():\n    import radocc.train\n",
        "radocc/render.py": "from radocc import models\n",
        "radocc/occ3d.py": "",
        "radocc/models/__init__.py": "from .camera import X\n",
        "radocc/models/camera.py": "from ..data.rig import CAMERA_NAMES\nfrom radocc.render import Y\n",
        "radocc/data/__init__.py": "",
        "radocc/train.py": "",
    }
    rules = {"radocc.metrics": LOW_LEVEL_FORBIDDEN, "radocc.losses": LOW_LEVEL_FORBIDDEN,
             "radocc.render": LOW_LEVEL_FORBIDDEN, "radocc.occ3d": LOW_LEVEL_FORBIDDEN,
             "radocc.models": MODELS_FORBIDDEN, "radocc.models.camera": MODELS_FORBIDDEN}
    assert violations(sources, rules) == [
        "radocc/losses.py:1 imports radocc.helper -> radocc/helper.py:2 imports radocc.train",
        "radocc/metrics.py:4 imports radocc.data",
        "radocc/models/camera.py:1 imports radocc.data.rig",
        "radocc/render.py:1 imports radocc.models",
    ]


def test_fresh_interpreter_loads_no_higher_layer() -> None:
    script = (
        "import json, sys\n"
        "import radocc.metrics, radocc.losses, radocc.render, radocc.render_reference, radocc.rays\n"
        "low = sorted(m for m in sys.modules if m.startswith('radocc'))\n"
        "import radocc.models\n"
        "models = sorted(m for m in sys.modules if m.startswith('radocc'))\n"
        "print(json.dumps([low, models]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    low, models = json.loads(done.stdout.strip().splitlines()[-1])
    assert "radocc.metrics" in low and "radocc.occ3d" in low, low
    assert not [m for m in low if _within(m, LOW_LEVEL_FORBIDDEN)], low
    assert "radocc.models.occupancy" in models, models
    assert not [m for m in models if _within(m, MODELS_FORBIDDEN)], models


@pytest.mark.parametrize("name", ["CLASS_NAMES", "FREE", "GRID_LOWER", "GRID_UPPER", "GRID_SHAPE",
                                  "NUM_CLASSES", "VOXEL_SIZE", "CAR"])
def test_occ3d_facts_have_one_definition(name: str) -> None:
    import radocc.data
    import radocc.data.occ3d
    import radocc.metrics
    import radocc.occ3d

    fact = getattr(radocc.occ3d, name)
    assert getattr(radocc.data.occ3d, name) is fact
    assert getattr(radocc.data, name, fact) is fact
    metrics_names = {"CLASS_NAMES": "OCC3D_CLASSES", "FREE": "OCC3D_FREE", "GRID_LOWER": "OCC3D_LOWER",
                     "GRID_UPPER": "OCC3D_UPPER", "GRID_SHAPE": "OCC3D_SHAPE",
                     "NUM_CLASSES": "OCC3D_NUM_CLASSES"}
    if name in metrics_names:
        assert getattr(radocc.metrics, metrics_names[name]) is fact
