"""The run record's one writer, ``dp_zoo.engine.record_builder.RunRecordBuilder`` (issue #29, Redesign II).

Each section is set once; ``build()`` runs ``check_run_record``; a record built
through the builder is the same JSON, keys in the same order, as the one the
writers produced before it (their old code is kept below as the reference, on
plain dict fixtures: no training); and no module of dp_zoo but the builder's
writes into a run record (read from the source with ``ast``).
"""

import ast
import copy
import json
import pathlib
import re
import types

import pytest

from dp_zoo.cards import run_record
from dp_zoo.engine import record_builder, record_schema
from dp_zoo.engine.record_builder import RunRecordBuilder, SectionSetTwice
from dp_zoo.jobs import tuning

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dp_zoo"
BUILDER = PACKAGE / "engine" / "record_builder.py"
SHA = "ab" * 32
PUBLISHED_SHA = "cd" * 32


# -- the writers' code before the builder (the reference the builder must reproduce) ---------------

def _old_mark_not_private(privacy, reason, detail):
    nominal = {k: privacy.get("epsilon_" + k) for k in ("pld", "rdp")}
    if any(v is not None for v in nominal.values()):
        privacy["nominal_epsilon"] = nominal
    privacy.update(private=False, epsilon=None, epsilon_pld=None, epsilon_rdp=None,
                   not_private={"reason": reason, "detail": detail})


def _old_operational(wall_time_s, *, private):
    if private:
        return {"wall_time_s": None, "note": record_builder.PRIVATE_TIMING_NOTE}
    return {"wall_time_s": round(float(wall_time_s), 3), "note": record_builder.OPERATIONAL_NOTE}


def _old_engine(inputs):
    """The tail of the old ``record_sections.engine_sections``: the privacy section, then the dict."""
    privacy = copy.deepcopy(inputs["privacy"])
    if inputs["not_private"]:
        _old_mark_not_private(privacy, *inputs["not_private"])
    return {"schema_version": 1, "config": copy.deepcopy(inputs["config"]), "privacy": privacy,
            "history": copy.deepcopy(inputs["history"]), "model": copy.deepcopy(inputs["model"]),
            "software": dict(inputs["software"]), "hardware": dict(inputs["hardware"]),
            "operational": _old_operational(inputs["wall_time_s"], private=bool(privacy["private"])),
            "steps_planned": 10, "steps_completed": 10}


def _old_training(record, command, *, probe=None, void_init=None):
    """The old ``jobs/training.py`` after ``fit``: probe's model, weights, ``complete``, a void init, published."""
    if probe is not None:
        record["model"].update(num_params=int(probe["num_params"]), input_shape=list(probe["input_shape"]),
                               trained=probe["trained"])
    record["weights_sha256"] = SHA
    record["metrics"] = command["metrics"]
    record["data"] = command["data"]
    record["model"]["init"] = command["init"]
    record["entry_name"] = command["entry_name"]
    record["published_weights"] = command["published_weights"]
    if void_init is not None and record["privacy"]["private"]:
        _old_mark_not_private(record["privacy"], *void_init)
    record["published_weights_sha256"] = PUBLISHED_SHA
    return record


def _old_tuning(record, command, section, target_epsilon):
    """The old ``Tuner._finish``: ``complete``, ``apply_tuning``, the weights' digest."""
    record = _old_training(record, command)
    del record["weights_sha256"], record["published_weights_sha256"]  # the tuner set them elsewhere
    privacy = record["privacy"]
    section["selected_trial_epsilon"] = {"pld": privacy.get("epsilon_pld"), "rdp": privacy.get("epsilon_rdp")}
    privacy.update(epsilon=section["total_epsilon"], epsilon_rdp=section["total_epsilon"], epsilon_pld=None,
                   accountant="rdp", target_epsilon=target_epsilon, tuning=section)
    record["operational"] = {"wall_time_s": None, "note": record_builder.TUNED_TIMING_NOTE}
    record["weights_sha256"] = SHA
    return record


# -- plain dict fixtures ----------------------------------------------------------------------------

def _engine_inputs(*, private=True, not_private=None):
    """``set_engine``'s arguments."""
    eps = {"epsilon": 3.2, "epsilon_pld": 3.2, "epsilon_rdp": 3.9} if private else dict.fromkeys(
        ("epsilon", "epsilon_pld", "epsilon_rdp"))
    privacy = {
        "private": private, "delta": 1e-5, "accountant": "pld" if private else None,
        "accountant_requested": "pld" if private else None, "dp_accounting_version": "0.4.4",
        "noise_multiplier": 1.5 if private else 0.0, "sampling": "poisson", "sampling_probability": 0.1,
        "dataset_size": 1000, "expected_batch_size": 100.0, "steps": 10, "target_epsilon": 8.0 if private else None,
        "adjacency": "add_or_remove_one", "privacy_unit": "example", "tan_simulation": None,
        "epsilon_pld": eps["epsilon_pld"], "epsilon_rdp": eps["epsilon_rdp"], "epsilon": eps["epsilon"],
        "l2_clip": 1.0 if private else None, "nonfinite_steps_skipped": 0,
        "randomness": "secret: test" if private else None,
    }
    return {
        "config": {"model": "wrn_test", "seed": 7, "dp": {"enabled": private, "l2_clip": 1.0}},
        "privacy": privacy,
        "history": [{"step": s, "epsilon": 0.3 * s if private else None, "loss": 2.0 - 0.1 * s} for s in (5, 10)],
        "model": {"architecture": "wrn_test", "num_params": 42, "input_shape": [8, 8, 1], "num_classes": 10,
                  "init_checkpoint": None, "trained": None},
        "software": {"dp_zoo": "0.1.0", "tensorflow": "2.x", "keras": "3.x", "dp_accounting": "0.4.4",
                     "python": "3.11"},
        "hardware": {"platform": "linux", "processor": "x86_64", "cpu_count": 2, "devices": ["/cpu:0"],
                     "num_replicas": 1},
        "wall_time_s": 12.34567, "not_private": not_private, "steps_planned": 10, "steps_completed": 10,
    }


COMMAND = {
    "metrics": {"test_accuracy_last": 0.41, "test_accuracy_ema": 0.45, "test_accuracy_polyak": None,
                "evaluated_on": "test"},
    "data": {"dataset": "digits", "train_split": "train", "test_split": "test", "train_size": 1000,
             "test_size": 360, "mean": [0.3], "std": [0.4], "public_pretraining_data": None},
    "init": None, "entry_name": "wrn_digits_eps8", "published_weights": "ema",
}
PROBE = {"num_params": 4242, "input_shape": (32, 32, 3), "trained": {"spec": "head", "params": 42}}
TUNING = {
    "method": "Papernot & Steinke 2022",
    "trial_distribution": {"kind": "poisson", "mean": 3.0, "expected_trials": 3.16},
    "number_of_trials": "secret", "grid": [{"lr": 1.0}], "search_space_source": "tests",
    "runs": [{"noise_multiplier": 1.5, "sampling_probability": 0.1, "steps": 10, "epsilon": 4.0}],
    "calibration": "per grid point", "per_trial_epsilon": 4.0, "total_epsilon": 7.5, "accountant": "rdp",
    "score": {"mechanism": "noisy count", "noise_std": 10.0, "validation_size": 300, "noisy_accuracy": 0.8},
    "selected": {"lr": 1.0},
}


def _engine_builder(**kw):
    return RunRecordBuilder().set_engine(**_engine_inputs(**kw))


def _same(new, old):
    """The same JSON, the keys of every dict in the same order too."""
    assert json.dumps(new) == json.dumps(old)


# -- each section once; build() checks ---------------------------------------------------------------

@pytest.mark.parametrize("again,section", [
    (lambda b: b.set_engine(**_engine_inputs()), "schema_version"),
    (lambda b: b.set_command(**COMMAND), "metrics"),
    (lambda b: b.set_weights(sha256=SHA), "weights_sha256"),
    (lambda b: b.set_weights(published_sha256=PUBLISHED_SHA), "published_weights_sha256"),
    (lambda b: b.set_audit({"epsilon_lower_bound": 0.2}), "audit"),
    (lambda b: b.set_tuning(TUNING, 8.0), "privacy.tuning"),
])
def test_a_section_set_twice_is_refused_naming_it(again, section):
    b = _engine_builder().set_command(**COMMAND).set_weights(sha256=SHA, published_sha256=PUBLISHED_SHA)
    b.set_tuning(TUNING, 8.0).set_audit({"epsilon_lower_bound": 0.1})
    before = copy.deepcopy(b.build(check=False))
    with pytest.raises(SectionSetTwice, match=re.escape(repr(section))) as e:
        again(b)
    assert isinstance(e.value, ValueError) and "already set" in str(e.value)
    assert b.build(check=False) == before  # nothing was written


def test_the_command_sections_of_a_record_read_back_are_refused_and_model_init_too():
    record = _old_training(_old_engine(_engine_inputs()), copy.deepcopy(COMMAND))
    with pytest.raises(SectionSetTwice, match="'metrics'"):
        run_record.complete(record, **COMMAND)
    del record["metrics"], record["data"], record["entry_name"], record["published_weights"]
    with pytest.raises(SectionSetTwice, match="'model.init'"):
        RunRecordBuilder.from_record(record).set_command(**COMMAND)


def test_the_command_needs_the_engines_sections_first_and_a_newer_audit_replaces_only_when_asked():
    with pytest.raises(ValueError, match="'model' section, which is not set yet"):
        RunRecordBuilder().set_command(**COMMAND)
    b = _engine_builder().set_audit({"epsilon_lower_bound": 0.1}).set_audit({"epsilon_lower_bound": 0.3}, replace=True)
    assert b.build(check=False)["audit"] == {"epsilon_lower_bound": 0.3}


def test_build_of_an_incomplete_record_raises_the_checkers_error():
    b = _engine_builder()
    with pytest.raises(ValueError, match=r"lacks the section\(s\) \['data', 'metrics'\]") as e:
        b.build()
    with pytest.raises(ValueError) as direct:
        record_schema.check_run_record(b.build(check=False))
    assert str(e.value) == str(direct.value)
    record = b.set_command(**COMMAND).build()  # complete now
    assert record is b.build() and run_record.check_run_record is record_schema.check_run_record


def test_build_refuses_a_tuned_record_that_carries_a_trial_count():
    b = _engine_builder().set_command(**COMMAND).set_tuning({**TUNING, "trials_run": 4}, 8.0)
    with pytest.raises(ValueError, match="no number of trials"):
        b.build()


# -- the same record as before the builder -------------------------------------------------------------

@pytest.mark.parametrize("private,not_private", [
    (True, None), (False, None), (True, ("reproducible run", "derived from the public seed 7")),
    (True, ("noise disabled", "no noise")),
])
def test_the_engines_sections_are_the_old_ones(private, not_private):
    inputs = _engine_inputs(private=private, not_private=not_private)
    _same(_engine_builder(private=private, not_private=not_private).build(check=False), _old_engine(inputs))


@pytest.mark.parametrize("probe,void_init", [(None, None), (PROBE, None), (None, ("public init", "details")),
                                             (PROBE, ("public init", "details"))])
def test_a_trained_record_is_the_old_one(probe, void_init):
    old = _old_training(_old_engine(_engine_inputs()), copy.deepcopy(COMMAND), probe=probe, void_init=void_init)
    b = _engine_builder()
    if probe is not None:
        b.set_model_override(**probe)
    b.set_weights(sha256=SHA).set_command(**COMMAND)
    if void_init is not None:
        b.mark_not_private(*void_init)
    new = b.set_weights(published_sha256=PUBLISHED_SHA).build()
    _same(new, old)
    if void_init is not None:  # private when its operational section was decided: the time stays unpublished
        assert new["privacy"]["epsilon"] is None and new["privacy"]["nominal_epsilon"] == {"pld": 3.2, "rdp": 3.9}
        assert new["operational"] == {"wall_time_s": None, "note": record_builder.PRIVATE_TIMING_NOTE}


def test_a_tuned_record_is_the_old_one_and_publishes_no_timing():
    old = _old_tuning(_old_engine(_engine_inputs()), copy.deepcopy(COMMAND), copy.deepcopy(TUNING), 8.0)
    new = _engine_builder().set_command(**COMMAND).set_tuning(TUNING, 8.0).set_weights(sha256=SHA).build()
    _same(new, old)
    assert new["operational"]["wall_time_s"] is None and "selected_trial_epsilon" not in TUNING
    legacy = _engine_builder().set_command(**COMMAND).build()
    assert tuning.apply_tuning(legacy, copy.deepcopy(TUNING), 8.0) is legacy  # in place, as before
    _same(legacy, {k: v for k, v in old.items() if k != "weights_sha256"})


def test_the_old_names_write_through_the_builder_in_place():
    record = _old_engine(_engine_inputs())
    old = _old_training(copy.deepcopy(record), copy.deepcopy(COMMAND))
    assert run_record.complete(record, **COMMAND) is record
    RunRecordBuilder.from_record(record).set_weights(published_sha256=PUBLISHED_SHA)
    _same(record, {k: v for k, v in old.items() if k != "weights_sha256"})
    privacy = copy.deepcopy(record["privacy"])
    assert record_builder.mark_not_private(privacy, "r", "d") is privacy and privacy["epsilon"] is None


def test_the_engine_and_the_linear_probe_write_what_they_wrote_before():
    """``record_sections.engine_sections`` (with stand-ins for the trainer's objects) and
    ``Probe.complete_record``: TensorFlow is imported here."""
    from dp_zoo.engine import linear_probe, record_sections

    inputs = _engine_inputs(not_private=("reproducible run", record_sections.REPRODUCIBLE_DETAIL.format(seed=7)))
    ledger_summary = {k: v for k, v in inputs["privacy"].items()
                      if k not in ("l2_clip", "nonfinite_steps_skipped", "randomness")}
    dp = types.SimpleNamespace(enabled=True, l2_clip=1.0)
    config = types.SimpleNamespace(dp=dp, deterministic=True, seed=7, tan_simulation_factor=None, model="wrn_test",
                                   init_checkpoint=None, to_dict=lambda: copy.deepcopy(inputs["config"]))
    record = record_sections.engine_sections(
        config=config, ledger=types.SimpleNamespace(summary=lambda tan_simulation: dict(ledger_summary)),
        model=types.SimpleNamespace(count_params=lambda: 42),
        train=types.SimpleNamespace(input_shape=(8, 8, 1), num_classes=10),
        strategy=types.SimpleNamespace(num_replicas_in_sync=1), history=inputs["history"], wall_time_s=12.34567,
        steps_planned=10, steps_completed=10, nonfinite_steps=0)
    privacy = {**inputs["privacy"], "randomness": record_sections.RANDOMNESS_REPRODUCIBLE}
    old = _old_engine({**inputs, "privacy": privacy, "software": record["software"], "hardware": record["hardware"]})
    _same(record, old)
    assert record["operational"]["wall_time_s"] == 12.346  # not private: the time is published
    probe = types.SimpleNamespace(model=types.SimpleNamespace(count_params=lambda: PROBE["num_params"]),
                                  input_shape=PROBE["input_shape"], trained=PROBE["trained"])
    assert linear_probe.Probe.complete_record(probe, record) is record
    _same(record["model"], {**old["model"], "num_params": 4242, "input_shape": [32, 32, 3],
                            "trained": PROBE["trained"]})
    assert record_sections.mark_not_private is record_builder.mark_not_private


# -- no other writer ---------------------------------------------------------------------------------

RECORD_NAME = re.compile(r"^(rec|record|run_record|\w+_record)$")
MUTATING_METHODS = {"update", "pop", "popitem", "setdefault", "clear", "append", "extend", "insert", "remove"}
SECTION_WRITERS = {"mark_not_private"}  # functions that change the privacy section they are given


def _root(node):
    """The name a chain of subscripts hangs from (``record`` for ``record["a"]["b"]``, ``self.record[...]``
    and ``record.get("a")["b"]``), or None."""
    while True:
        if isinstance(node, ast.Subscript):
            node = node.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("get", "setdefault")):
            node = node.func.value
        else:
            break
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def _walk(scope):
    """``ast.walk`` of a module's or a function's own code, not into the functions defined in it (their own scopes)."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def _writes_in(scope):
    """Lines of ``scope`` (a function or module node) that write into a run record or an alias of a section."""
    aliases = set()
    for node in _walk(scope):  # p = record["privacy"]; metrics, p = record["metrics"], record["privacy"]
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = (zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple)
                         and isinstance(node.value, ast.Tuple) else [(target, node.value)])
                for t, v in pairs:
                    if isinstance(t, ast.Name) and isinstance(v, ast.Subscript) and _is_record(_root(v), ()):
                        aliases.add(t.id)
    lines = set()
    for node in _walk(scope):
        targets = (node.targets if isinstance(node, (ast.Assign, ast.Delete)) else
                   [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        if any(isinstance(t, ast.Subscript) and _is_record(_root(t), aliases) for t in targets):
            lines.add(node.lineno)
        if isinstance(node, ast.Call):
            method = isinstance(node.func, ast.Attribute)
            name = node.func.attr if method else getattr(node.func, "id", None)
            if ((method and name in MUTATING_METHODS and _is_record(_root(node.func.value), aliases))
                    or (name in SECTION_WRITERS and any(isinstance(a, ast.Subscript) and _is_record(_root(a), aliases)
                                                        for a in node.args))):
                lines.add(node.lineno)
    return lines


def _is_record(name, aliases):
    return name is not None and (bool(RECORD_NAME.match(name)) or name in aliases)


def record_writes(source):
    """The lines of ``source`` that write into a run record: an assignment or ``del`` into a subscript of
    one (or of a name bound to one's section), a mutating method called on it, or a section passed to
    ``mark_not_private``. Reading (subscripts, ``.get``, passing a section to a reader) is not writing."""
    tree = ast.parse(source)
    scopes = [tree] + [n for n in ast.walk(tree)
                       if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    return sorted(set().union(*(_writes_in(s) for s in scopes)))


def test_the_writes_check_catches_writes_and_passes_reads():
    bad = '''
def f(record, rec, self):
    record["x"] = 1
    rec["privacy"]["epsilon"] = None
    record["model"].update(a=1)
    p = record["privacy"]
    p.update(private=False)
    metrics, q = record["metrics"], record["privacy"]
    q["epsilon"] += 1
    del record["audit"]
    record.setdefault("operational", {})["wall_time_s"] = None
    record_sections.mark_not_private(record["privacy"], "r", "d")
    self.record["data"] = {}
    run_record["history"].append({})


def h(record):
    m = record["metrics"]
    fix = lambda: record.update(x=1)
'''
    assert record_writes(bad) == [3, 4, 5, 7, 9, 10, 11, 12, 13, 14, 19]  # not the aliases' lines 6 and 8
    good = '''
def g(record, config):
    x = record["a"]
    record.get("b")
    print(record["data"]["dataset"], record["privacy"]["private"] == True)
    p = record["privacy"]
    eps = p["epsilon"]
    c = {k: v for k, v in record["config"].items()}
    c["dp"] = {}
    out = {**record, "x": 1}
    config["dp"] = {}
    records = []
    records.append(record)


def k(metrics):  # a name that is an alias in another function is not one here
    metrics["test_accuracy_ema"] = 0.5
'''
    assert record_writes(good) == []


def test_no_module_but_the_builder_writes_into_a_run_record():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != BUILDER:
            found += [f"{path.relative_to(ROOT)}:{line}" for line in record_writes(path.read_text())]
    assert not found, ("writes into a run record outside dp_zoo/engine/record_builder.py (use its "
                       "RunRecordBuilder):\n" + "\n".join(found))
