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
