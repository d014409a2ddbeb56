"""No code under src/ unpickles a file: a checkpoint or array from a user (or a download) could run code when loaded.

Checkpoints are safetensors or ``torch.load(..., weights_only=True)``; arrays are ``np.load`` without pickles.
The check reads the source's syntax tree, so a call split over lines or under an alias of its module is still seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# calls that unpickle whatever they are given
FORBIDDEN = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "dill.load", "dill.loads",
             "cloudpickle.load", "cloudpickle.loads", "joblib.load", "pandas.read_pickle", "torch.jit.load"}


def unsafe_loads(source: str) -> list[str]:
    """'line: call' for each call in ``source`` that can unpickle a file."""
    tree = ast.parse(source)
    aliases = {}  # local name -> module or module.attribute it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name: a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            aliases |= {a.asname or a.name: f"{node.module}.{a.name}" for a in node.names}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name is None:
            continue
        head, _, tail = name.partition(".")
        name = ".".join(filter(None, (aliases.get(head, head), tail)))
        keywords = {k.arg: k.value for k in node.keywords}
        weights_only = keywords.get("weights_only")
        allow_pickle = keywords.get("allow_pickle")
        if (name in FORBIDDEN
                or name == "torch.load" and not (isinstance(weights_only, ast.Constant) and weights_only.value is True)
                or name == "numpy.load" and allow_pickle is not None
                and not (isinstance(allow_pickle, ast.Constant) and allow_pickle.value is False)):
            found.append(f"{node.lineno}: {name}")
    return found


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def test_the_check_catches_unsafe_loads():
    unsafe = """
import pickle, torch, joblib
import numpy as np
from torch import load as tload
pickle.load(open(p, "rb"))
torch.load(p)
torch.load(p, weights_only=False)
tload(p, map_location="cpu")
joblib.load(p)
np.load(p, allow_pickle=True)
np.load(p, allow_pickle=flag)
"""
    assert [f.split(": ")[1] for f in unsafe_loads(unsafe)] == [
        "pickle.load", "torch.load", "torch.load", "torch.load", "joblib.load", "numpy.load", "numpy.load"]
    safe = """
import torch
import numpy as np
torch.load(p, map_location="cpu",
           weights_only=True)
np.load(p)
np.load(p, allow_pickle=False)
"""
    assert unsafe_loads(safe) == []


def test_src_never_unpickles():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    found = [f"{path.relative_to(SRC)}:{hit}" for path in files for hit in unsafe_loads(path.read_text())]
    assert not found, f"loads that can unpickle (use safetensors or weights_only=True): {found}"
