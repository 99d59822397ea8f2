"""The package's import layering (docs/design.md, "Layers"), read from the source with ``ast``.

Every module under ``dp_zoo/`` belongs to one layer, the layer of its folder
(a top-level module names its own in ``TOP_LEVEL``); a module may import its
own layer or lower ones, never a higher one, no set of modules imports itself
in a circle, and no module imports an old path (issue #29's moved modules under
their old names, kept for one release). Imports inside functions count the same
as top-level ones: a deferred import is still a dependency. No TensorFlow is
imported here.
"""

import ast
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dp_zoo"
DESIGN = ROOT / "docs" / "design.md"

# Lowest first. A module's layer is its folder under dp_zoo/ (with every folder below it), so a new
# file is placed by where it is put; a module at the top level names its layer in TOP_LEVEL; a
# package's __main__.py is a command line wherever it sits.
LAYERS = (
    ("foundations", ("models", "accounting", "recipes", "data")),
    ("dp step", ("dp",)),
    ("engine", ("engine",)),
    ("cards", ("cards",)),
    ("publish", ("publish", "export")),
    ("jobs", ("jobs", "audit")),
    ("commands", ("commands",)),
    ("old paths", ("train",)),
)
TOP_LEVEL = {"dp_zoo": "foundations", "cli": "foundations", "preprocessing": "foundations", "precision": "foundations"}
# The top-level modules that moved in issue #29: each is the moved module under its old name, for one release.
OLD_PATHS = ("card_check", "card_html", "card_markdown", "download", "manifest", "model_card", "pretrained",
             "privacy", "run_record", "scripts", "serve", "tan", "tune", "zoo")
TOP_LEVEL.update({name: "old paths" for name in OLD_PATHS})
LAYER_NAMES = [name for name, _ in LAYERS]


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module):
    """(index, name) of ``module``'s layer, or None if neither its folder nor TOP_LEVEL places it."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        name = "commands"
    elif len(parts) <= 2 and (module == "dp_zoo" or MODULES.get(module, PACKAGE).name != "__init__.py"):
        name = TOP_LEVEL.get(parts[-1])
    else:
        name = next((n for n, folders in LAYERS if parts[1] in folders), None)
    return None if name is None else (LAYER_NAMES.index(name), name)


def _target(module, node):
    """The dp_zoo modules an import node names (``from pkg import mod`` names ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".")
            keep = len(base) - node.level + (1 if MODULES[module].name == "__init__.py" else 0)
            stem = ".".join(base[:keep] + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in MODULES else stem for a in node.names]
    out = []
    for name in names:
        while name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in MODULES and name != module:
            out.append(name)
    return out


def imports_of(module):
    """``[(line, imported module)]`` for every dp_zoo import in ``module``, at any depth."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    return [(node.lineno, t) for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
            for t in _target(module, node)]


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if layer_of(m) is None]
    assert not missing, f"modules in no layer of tests/test_layering.py's LAYERS (and docs/design.md): {missing}"


def upward_imports(graph=GRAPH):
    """``file:line: a (layer) -> b (higher layer)`` for each import from a lower layer to a higher one."""
    bad = []
    for m, deps in graph.items():
        for line, d in deps:
            (lm, nm), (ld, nd) = layer_of(m), layer_of(d)
            if ld > lm:
                bad.append(f"{MODULES[m].relative_to(ROOT)}:{line}: {m} ({nm}) -> {d} ({nd})")
    return bad


def test_no_import_goes_up_a_layer():
    bad = upward_imports()
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def cycles(graph=GRAPH):
    """The import circles of ``graph`` (strongly connected components of more than one module)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for _, w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert cycles() == []


def old_path_imports(graph=GRAPH):
    """``file:line: a -> b`` for each import of an old path (layer "old paths") by a module of another layer."""
    old = {m for m in MODULES if layer_of(m)[1] == "old paths"}
    return [f"{MODULES[m].relative_to(ROOT)}:{line}: {m} -> {d}" for m, deps in graph.items() if m not in old
            for line, d in deps if d in old]


def test_nothing_imports_an_old_path():
    """The old paths are for users' code for one release: dp_zoo itself uses the new ones."""
    bad = old_path_imports()
    assert not bad, "imports of an old module path (import the moved module instead):\n" + "\n".join(bad)


def test_the_checks_catch_what_they_are_for():
    """The checks on made-up graphs: an upward import, a circle and an old-path import are reported."""
    up = {"dp_zoo.dp.noise": [(7, "dp_zoo.engine.trainer")], "dp_zoo.engine.trainer": [(3, "dp_zoo.dp.noise")]}
    assert upward_imports(up) == ["dp_zoo/dp/noise.py:7: dp_zoo.dp.noise (dp step) -> dp_zoo.engine.trainer (engine)"]
    assert cycles(up) == [["dp_zoo.dp.noise", "dp_zoo.engine.trainer"]]
    assert cycles({"dp_zoo.publish.zoo": [(1, "dp_zoo.publish.serve")], "dp_zoo.publish.serve": []}) == []
    assert old_path_imports({"dp_zoo.publish.zoo": [(5, "dp_zoo.train.recipes")]}) == [
        "dp_zoo/publish/zoo.py:5: dp_zoo.publish.zoo -> dp_zoo.train.recipes"]
    assert layer_of("dp_zoo.models.some_new_family")[1] == "foundations"
    assert layer_of("dp_zoo.engine.new.deeper")[1] == "engine"
    assert layer_of("dp_zoo.export.__main__")[1] == "commands"
    assert layer_of("dp_zoo.cli")[1] == "foundations" and layer_of("dp_zoo.zoo")[1] == "old paths"
    assert layer_of("dp_zoo.some_new_top_level_module") is None
    assert layer_of("dp_zoo.new_folder.module") is None


def test_recipes_import_no_tensorflow():
    """recipes/ (and the zoo's listing, which reads it) import no TensorFlow: a fresh process checks."""
    code = ("import sys, dp_zoo.recipes.recipes, dp_zoo.recipes.epsilons, dp_zoo.recipes.search_spaces, "
            "dp_zoo.recipes.sources, dp_zoo.recipes.config; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def _layers_section():
    text = DESIGN.read_text()
    section = text.split("## Layers", 1)
    assert len(section) == 2, "docs/design.md has no '## Layers' section"
    return section[1].split("\n## ", 1)[0]


def test_design_doc_shows_every_layer_folder_and_top_level_module():
    """docs/design.md's Layers section names every layer, every folder and every top-level module but the old paths."""
    layout = _layers_section()
    for name, folders in LAYERS:
        assert name in layout, f"docs/design.md's Layers section does not name the layer {name!r}"
        for folder in folders:
            assert f"{folder}/" in layout, f"docs/design.md's Layers section does not show the folder {folder}/"
    folders = {p.relative_to(PACKAGE).parts[0] for p in MODULES.values() if len(p.relative_to(PACKAGE).parts) > 1}
    assert folders == {f for _, fs in LAYERS for f in fs}, "a folder of dp_zoo/ is in no layer of LAYERS"
    for name, layer in TOP_LEVEL.items():
        if layer != "old paths" and name != "dp_zoo":
            assert f"{name}.py" in layout, f"docs/design.md's Layers section does not name {name}.py"


def test_docs_point_at_files_that_exist():
    """Every dp_zoo/... path that README.md and docs/*.md name exists (the tour table follows a move)."""
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for path in re.findall(r"(?<![\w/.])(dp_zoo/[\w/.]*\w)", doc.read_text()):
            if not (ROOT / path).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, "paths that name no file:\n" + "\n".join(missing)
