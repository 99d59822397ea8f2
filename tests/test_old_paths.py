"""The module paths that moved in issue #29 keep working for one release (docs/design.md, "Layers").

Each old path is the moved module itself, so a user's ``from dp_zoo.train import engine``,
private names, ``isinstance`` and monkeypatching reach the one real module, never a second
copy of it. Checked in a fresh process, for every old-path file (tests/test_layering.py
places them).
"""

import ast
import json
import os
import subprocess
import sys

from tests.test_layering import MODULES, ROOT, layer_of


def _old_to_new():
    """``{old module: new module}`` read from each old-path file's ``import NEW as _new``."""
    pairs = {}
    for module, path in MODULES.items():
        if layer_of(module)[1] != "old paths" or path.name == "__init__.py":
            continue
        targets = {a.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Import)
                   for a in node.names if a.asname == "_new"}
        assert len(targets) == 1, f"{path.relative_to(ROOT)}: not an old path of exactly one module: {targets}"
        pairs[module] = targets.pop()
    return pairs


def test_every_old_path_is_its_moved_module():
    pairs = _old_to_new()
    assert "dp_zoo.train.engine" in pairs and pairs["dp_zoo.train.engine"] == "dp_zoo.engine.trainer"
    code = ("import importlib, json, sys\n"
            f"pairs = json.loads({json.dumps(json.dumps(pairs))})\n"
            "bad = [o for o, n in pairs.items() if importlib.import_module(o) is not importlib.import_module(n)]\n"
            "from dp_zoo.train.data import load_dataset\n"
            "from dp_zoo.data import load_dataset as new\n"
            "from dp_zoo.train import data\n"
            "import dp_zoo.data.catalogue\n"
            "bad += [] if load_dataset is new and data.catalogue is dp_zoo.data.catalogue else ['dp_zoo.train.data']\n"
            "import dp_zoo\n"
            "bad += [] if callable(dp_zoo.card) else ['dp_zoo.card is not the function']\n"
            "print(json.dumps(bad))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
