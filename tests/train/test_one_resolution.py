"""Steps, sigma and C are resolved in one function, and the Trainer and make_private run one DP step.

Redesign II (docs/design.md, "Where sigma, steps and C are decided"): every
path (the Trainer, and through it train, tune and audit; the TAN simulation;
make_private) calls ``dp_zoo.engine.resolve.resolve_privacy``, and
``make_private``'s ``PrivateModel`` trains with the engine's
``dp_zoo.engine.step.build_step_functions``.
"""

import ast
import pathlib

import keras
import numpy as np
import pytest

import dp_zoo
from dp_zoo.engine import resolve, step as step_lib, tan
from dp_zoo.recipes import config as C

PACKAGE = pathlib.Path(dp_zoo.__file__).parent
# accounting/ defines the calibration; commands/privacy.py is the privacy calculator (it trains nothing).
CALIBRATION_ALLOWED = {"engine/resolve.py", "commands/privacy.py"}


def _calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "attr", getattr(n.func, "id", None)) == name]


def test_no_module_but_resolve_calibrates_sigma_for_a_training_run():
    callers = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("accounting/"):
            continue
        if _calls(ast.parse(path.read_text()), "calibrate_noise"):
            callers.add(rel)
    assert callers == CALIBRATION_ALLOWED


class _Spy:
    def __init__(self, sigma=1.7):
        self.sigma, self.calls = sigma, []

    def __call__(self, **kw):
        self.calls.append(kw)
        return self.sigma


def _config(**kw):
    dp = C.DPConfig(l2_clip=0.5, noise_multiplier=None, target_epsilon=3.0, delta=1e-5, accountant="rdp")
    return C.TrainConfig(steps=None, epochs=2.1, batch_size=40, dp=dp, **kw)


def test_trainer_tan_and_make_private_resolve_the_same_plan(monkeypatch):
    spy = _Spy()
    monkeypatch.setattr(resolve.accounting, "calibrate_noise", spy)
    plan = resolve.resolve_config(_config(), 120)
    assert (plan.steps, plan.noise_multiplier, plan.l2_clip, plan.sampling_probability) == (7, 1.7, 0.5, 40 / 120)
    asked = dict(target_epsilon=3.0, sampling_probability=40 / 120, steps=7, delta=1e-5, accountant="rdp",
                 prior_runs=())
    assert spy.calls == [asked]
    inner = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    private = dp_zoo.make_private(inner, l2_clip=0.5, target_epsilon=3.0, epochs=2.1, dataset_size=120,
                                  batch_size=40, accountant="rdp")
    assert private.plan == plan and spy.calls == [asked, asked]
    # TAN scales the resolved sigma (its own calibration would not have gone through the spy).
    sim = tan.simulate(_config().replace(steps=7), 4, dataset_size=120)
    assert sim.dp.noise_multiplier == pytest.approx(1.7 * 10 / 40) and spy.calls[-1] == asked


def test_resolve_refuses_what_cannot_be_resolved():
    with pytest.raises(ValueError, match="l2_clip must be > 0"):
        resolve.resolve_privacy(dataset_size=100, batch_size=10, steps=5, noise_multiplier=1.0, l2_clip=0.0)
    with pytest.raises(ValueError, match="noise_multiplier or target_epsilon"):
        resolve.resolve_privacy(dataset_size=100, batch_size=10, steps=5, l2_clip=1.0)
    with pytest.raises(ValueError, match="planned epochs= or steps="):
        resolve.resolve_privacy(dataset_size=100, batch_size=10, target_epsilon=2.0, l2_clip=1.0,
                                steps_required=False)
    open_length = resolve.resolve_privacy(dataset_size=100, batch_size=10, noise_multiplier=1.0, l2_clip=1.0,
                                          steps_required=False)
    assert open_length.steps is None
    quiet = resolve.resolve_privacy(dataset_size=100, batch_size=10, steps=5, noise_multiplier=1.0, l2_clip=1.0,
                                    add_noise=False)
    assert (quiet.noise_multiplier, quiet.update_noise_multiplier) == (1.0, 0.0)
    baseline = resolve.resolve_privacy(dataset_size=100, batch_size=10, steps=5, private=False)
    assert (baseline.noise_multiplier, baseline.l2_clip) == (None, None)


def test_make_private_trains_with_the_engines_step_functions(monkeypatch):
    built = []
    real = step_lib.build_step_functions

    def spy(model, optimizer, spec, averages, *, strategy, views, clip_state=None):
        built.append((spec, views))
        return real(model, optimizer, spec, averages, strategy=strategy, views=views, clip_state=clip_state)

    monkeypatch.setattr(step_lib, "build_step_functions", spy)
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    private = dp_zoo.make_private(inner, l2_clip=0.5, noise_multiplier=1.3, dataset_size=120, batch_size=40,
                                  physical_batch_size=16)
    private.compile(optimizer=keras.optimizers.SGD(0.5))
    rng = np.random.default_rng(0)
    before = [w.copy() for w in inner.get_weights()]
    private.fit(rng.normal(size=(120, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 120), steps=2, verbose=0)
    assert len(built) == 1
    spec, views = built[0]
    assert views is step_lib.single_view
    assert (spec.private, spec.l2_clip, spec.noise_multiplier, spec.expected_batch_size) == (True, 0.5, 1.3, 40.0)
    assert private.ledger.steps == 2
    assert any(not np.array_equal(a, b) for a, b in zip(before, inner.get_weights()))
