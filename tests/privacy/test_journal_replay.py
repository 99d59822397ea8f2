"""Item 9: a lost step's budget is reused only when its replay is provably bit-identical."""

import json
import os
import shutil

import pytest

from .conftest import make_trainer, tiny_config


@pytest.fixture
def op_determinism():
    from tensorflow.python.framework import config as tf_config

    tf_config.enable_op_determinism()
    yield
    tf_config.disable_op_determinism()


def _crash_after_checkpoint(train, run_dir, config, lost=1):
    """Runs 2 steps (checkpoint at 2), then a journal that says ``lost`` more steps drew noise."""
    t = make_trainer(config, train, run_dir=run_dir)
    t.total_steps = 2
    t.fit()
    path = os.path.join(run_dir, "privacy_journal.json")
    with open(path) as f:
        journal = json.load(f)
    journal["ledger"]["steps"] = 2 + lost
    with open(path, "w") as f:
        json.dump(journal, f)
    return path, journal


def _resumed_steps(train, run_dir, config):
    t = make_trainer(config, train, run_dir=run_dir)
    t.restore()
    return t.step, t.ledger.steps


def test_journal_only_resume_always_counts(digits_train, tmp_path, op_determinism):
    """No checkpoint left: even a reproducible run with op determinism counts every journalled step."""
    cfg = tiny_config(deterministic=True, checkpoint_every=100)
    run_dir = str(tmp_path / "run")
    t = make_trainer(cfg, digits_train, run_dir=run_dir)
    t.train_step(0)
    t.train_step(1)  # journalled, never checkpointed
    assert not os.path.isdir(os.path.join(run_dir, "checkpoints"))
    assert _resumed_steps(digits_train, run_dir, cfg) == (0, 2)


def test_replay_without_op_determinism_counts(digits_train, tmp_path):
    cfg = tiny_config(deterministic=True, checkpoint_every=100)
    run_dir = str(tmp_path / "run")
    _crash_after_checkpoint(digits_train, run_dir, cfg)
    assert _resumed_steps(digits_train, run_dir, cfg) == (2, 3)


REPLAY_CONFIG = tiny_config(checkpoint_every=100)  # a private run: its secret is in the run directory


@pytest.fixture(scope="module")
def crashed_private_run(digits_train, tmp_path_factory):
    """A private run that crashed after its step-2 checkpoint with one more step journalled, made once
    under op determinism; tests copy it."""
    from tensorflow.python.framework import config as tf_config

    run_dir = str(tmp_path_factory.mktemp("replay") / "run")
    tf_config.enable_op_determinism()
    try:
        _crash_after_checkpoint(digits_train, run_dir, REPLAY_CONFIG)
    finally:
        tf_config.disable_op_determinism()
    return run_dir


@pytest.mark.parametrize("field,value", [
    ("num_replicas", 2), ("device", "TPUStrategyV2:TPU"), ("config_sha256", "0" * 64), ("secret", "f" * 16),
    (None, None),
])
def test_replay_reuses_the_budget_only_when_everything_matches(digits_train, crashed_private_run, tmp_path,
                                                             op_determinism, field, value):
    cfg = REPLAY_CONFIG
    run_dir = str(tmp_path / "run")
    shutil.copytree(crashed_private_run, run_dir)
    path = os.path.join(run_dir, "privacy_journal.json")
    with open(path) as f:
        journal = json.load(f)
    assert journal["replay"]["op_determinism"] is True and journal["ledger"]["steps"] == 3
    assert _resumed_steps(digits_train, run_dir, cfg) == (2, 2)  # identical replay: nothing more spent
    if field is None:
        del journal["replay"]  # a journal that does not say
    else:
        journal["replay"][field] = value
    with open(path, "w") as f:
        json.dump(journal, f)
    assert _resumed_steps(digits_train, run_dir, cfg) == (2, 3)


def test_a_restart_without_checkpoints_never_reuses_the_secret(digits_train, tmp_path):
    """Issue #26 item 4: checkpoints/ deleted after a finished run (lr 0.5), then a run with lr 1.0 in
    the same directory. Reusing run_secret.bin would give both released models the same batches and
    the same noise, which cancels in their difference. The second run draws a new secret (so its
    batches and noise are independent of the first's), and every journalled step still counts."""
    import numpy as np

    from dp_zoo.data import sampling
    from dp_zoo.recipes import config as C

    run_dir = tmp_path / "run"
    first = make_trainer(tiny_config(steps=2), digits_train, run_dir=str(run_dir))
    first.fit()
    shutil.rmtree(run_dir / "checkpoints")
    for cfg in (tiny_config(steps=2, optim=C.OptimConfig(learning_rate=1.0)), tiny_config(steps=2)):
        again = make_trainer(cfg, digits_train, run_dir=str(run_dir))
        assert again.restore() is None and again.ledger.steps == 2  # the first run's steps still count
        assert again.secret.to_bytes() != first.secret.to_bytes()
        assert again.secret.noise_seed(0) != first.secret.noise_seed(0)
        assert not np.array_equal(again.sampler.indices(0), first.sampler.indices(0))
        # The new secret is the directory's now: a later resume from its checkpoints replays it.
        assert (run_dir / sampling.SECRET_FILE).read_bytes() == again.secret.to_bytes()
