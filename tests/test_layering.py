"""The package's import layering (docs/design.md, "Layers"), read from the source with ``ast``.

Every module under ``dp_zoo/`` belongs to one layer; a module may import its
own layer or lower ones, never a higher one, and no set of modules imports
itself in a circle. Imports inside functions count the same as top-level
ones: a deferred import is still a dependency. No TensorFlow is imported here.
"""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dp_zoo"
DESIGN = ROOT / "docs" / "design.md"

# Lowest first; a module's layer is that of the longest prefix that names it
# (a package's prefix covers every module in it, so new files are covered).
LAYERS = (
    ("foundations", ("dp_zoo", "dp_zoo.cli", "dp_zoo.publish.manifest", "dp_zoo.preprocessing", "dp_zoo.models",
                     "dp_zoo.accounting", "dp_zoo.train", "dp_zoo.recipes.config", "dp_zoo.recipes.recipes",
                     "dp_zoo.data", "dp_zoo.data.sampling")),
    ("dp step", ("dp_zoo.dp",)),
    ("engine", ("dp_zoo.engine.optim", "dp_zoo.engine.step", "dp_zoo.engine.checkpoint", "dp_zoo.engine.trainer",
                "dp_zoo.engine.resolve", "dp_zoo.engine.run_secret", "dp_zoo.engine.evaluation",
                "dp_zoo.engine.reporting", "dp_zoo.engine.record_sections", "dp_zoo.engine.keras_private",
                "dp_zoo.engine.fit_inputs",
                "dp_zoo.engine.trainable", "dp_zoo.engine.linear_probe", "dp_zoo.engine.run_lock", "dp_zoo.engine.tan")),
    ("run record", ("dp_zoo.cards.run_record",)),
    ("card/export/audit", ("dp_zoo.cards.model_card", "dp_zoo.cards.markdown", "dp_zoo.cards.html", "dp_zoo.cards.check",
                           "dp_zoo.export", "dp_zoo.audit")),
    ("zoo/serve/commands", ("dp_zoo.zoo", "dp_zoo.publish.download", "dp_zoo.serve", "dp_zoo.privacy", "dp_zoo.commands.scripts",
                            "dp_zoo.jobs.training", "dp_zoo.jobs.publishing", "dp_zoo.train.__main__",
                            "dp_zoo.jobs.init_weights",
                            "dp_zoo.jobs.init_privacy", "dp_zoo.train.known_weights", "dp_zoo.export.__main__",
                            "dp_zoo.audit.__main__", "dp_zoo.tune", "dp_zoo.data", "dp_zoo.publish.pretrained")),
)


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module):
    """(index, name) of ``module``'s layer, or None if no prefix in LAYERS names it."""
    best = None
    for index, (name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index, name)
    return None if best is None else best[1:]


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


def test_the_checks_catch_what_they_are_for():
    """Both checks on made-up graphs: an upward import and a circle are reported, with file and line."""
    up = {"dp_zoo.dp.noise": [(7, "dp_zoo.engine.trainer")], "dp_zoo.engine.trainer": [(3, "dp_zoo.dp.noise")]}
    assert upward_imports(up) == ["dp_zoo/dp/noise.py:7: dp_zoo.dp.noise (dp step) -> dp_zoo.engine.trainer (engine)"]
    assert cycles(up) == [["dp_zoo.dp.noise", "dp_zoo.engine.trainer"]]
    assert cycles({"dp_zoo.zoo": [(1, "dp_zoo.serve")], "dp_zoo.serve": []}) == []
    assert layer_of("dp_zoo.models.some_new_family")[1] == "foundations"
    assert layer_of("dp_zoo.export.__main__")[1] == "zoo/serve/commands"


def test_design_doc_names_every_module_and_the_layers():
    """docs/design.md's layout names every module (a move must update the map) and every layer."""
    text = DESIGN.read_text()
    section = text.split("## Layers", 1)
    assert len(section) == 2, "docs/design.md has no '## Layers' section"
    layout = section[1].split("\n## ", 1)[0]
    for name, _ in LAYERS:
        assert name in layout, f"docs/design.md's Layers section does not name the layer {name!r}"
    named = set(re.findall(r"`([\w/.]+)`", layout))
    names = {n.rsplit("/", 1)[-1] for n in named if not n.endswith("/")}
    dirs = {part for n in named for part in (n.split("/") if n.endswith("/") else n.split("/")[:-1]) if part}
    missing = []
    for p in MODULES.values():
        rel = p.relative_to(PACKAGE)
        in_package = len(rel.parts) == 1 or rel.parent.name in dirs
        if not (in_package and (p.name in names or (p.name == "__init__.py" and rel.parent.name in dirs))):
            missing.append(str(p.relative_to(ROOT)))
    assert not missing, f"docs/design.md's Layers section does not name: {missing}"
