"""Shared test settings: quiet TensorFlow, and every test isolated from the user's files.

Every test, and every subprocess it starts (they inherit the environment and
the working directory), gets its own empty ``DP_ZOO_HOME``, ``XDG_CACHE_HOME``,
``KERAS_HOME`` and working directory: a model the user published (``python -m
dp_zoo.train`` writes ``$DP_ZOO_HOME/wrn_digits_eps8``), Keras' downloaded
``mnist.npz`` (which ``--dataset mnist`` imports) or a ``runs/`` directory in the
checkout can never change what a test sees, and no test writes outside its
``tmp_path``. Session-scoped fixtures (which are set up before any test's own
fixtures) get the same isolation for the session, below.

Shared helpers live in ``tests/helpers.py`` (CLI runners, tiny configs) and
``tests/_zoo_helpers.py`` (run records and exported artifacts); test modules
never import each other.
"""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ISOLATED_VARS = ("DP_ZOO_HOME", "XDG_CACHE_HOME", "KERAS_HOME")


def _isolate(mp, root):
    """Points DP_ZOO_HOME, XDG_CACHE_HOME, KERAS_HOME and the working directory into ``root``."""
    for name in ISOLATED_VARS:
        d = root / name.lower()
        d.mkdir(parents=True, exist_ok=True)
        mp.setenv(name, str(d))
    cwd = root / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    mp.chdir(cwd)


@pytest.fixture(scope="session", autouse=True)
def _isolated_session(tmp_path_factory):
    """Isolation for session- and module-scoped fixtures (set up before any function fixture)."""
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, tmp_path_factory.mktemp("session_env"))
        yield


@pytest.fixture(autouse=True)
def _isolated_test(tmp_path_factory, monkeypatch):
    """Each test's own DP_ZOO_HOME, XDG_CACHE_HOME, KERAS_HOME and working directory (not inside ``tmp_path``,
    so a test that lists its ``tmp_path`` sees only what it wrote there)."""
    _isolate(monkeypatch, tmp_path_factory.mktemp("env"))
    yield


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory):
    """``(path, model, record)``: one real export (model.keras, SavedModel, card, plots, manifest) of a
    tiny model with a synthetic run record, made once. Read-only: tests that change it copy it first."""
    from tests import _zoo_helpers as H

    return H.exported(tmp_path_factory.mktemp("tiny_artifact"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A real 3-step private run of the tiny WRN on digits (run directory with checkpoints and journal),
    its complete run record, and its export, made once. Read-only: tests that change it copy it first.

    Returns a dict: ``run_dir``, ``artifact`` (paths), ``record``, ``model`` (the published EMA weights),
    ``config``, ``train``, ``test``.
    """
    import keras

    import dp_zoo
    from dp_zoo import data
    from dp_zoo import export
    from dp_zoo.engine import trainer as engine
    from dp_zoo.recipes import config as C

    root = tmp_path_factory.mktemp("trained_run")
    train = data.load_dataset(C.DataConfig(), "train")
    test = data.load_dataset(C.DataConfig(), "test")
    cfg = C.TrainConfig(model="wrn_test", batch_size=128, physical_batch_size=64, steps=3, eval_every=3,
                        checkpoint_every=1, dp=C.DPConfig(noise_multiplier=1.0, delta=1e-5),
                        ema=C.EMAConfig(decay=0.9), optim=C.OptimConfig(learning_rate=0.5),
                        augmult=C.AugmultConfig(num_views=2, style="crop", pad=1))
    keras.utils.set_random_seed(0)
    model = dp_zoo.create_model("wrn_test", num_classes=10)
    t = engine.Trainer(model, cfg, train, eval_data=test, augment_fn=data.make_augment_fn(cfg.augmult),
                       run_dir=str(root / "run"), progress=False)
    rec = t.fit()
    rec["metrics"] = {"test_accuracy_last": t.evaluate(test, "last")["accuracy"],
                      "test_accuracy_ema": t.evaluate(test, "ema")["accuracy"], "test_accuracy_polyak": None,
                      "evaluated_on": "test"}
    rec["data"] = {"dataset": "digits", "train_split": train.split, "test_split": test.split,
                   "train_size": len(train), "test_size": len(test), "mean": list(train.mean),
                   "std": list(train.std), "public_pretraining_data": None}
    rec["published_weights"] = "ema"
    published = t.model_for("ema")
    path = export.export_model(published, rec, str(root / "artifact" / "wrn_digits_eps8"),
                               entry_name="wrn_digits_eps8")
    return {"run_dir": root / "run", "artifact": path, "record": rec, "model": published, "config": cfg,
            "train": train, "test": test}


# Tests moved from the README's test command to the slow set (CI runs both) so that the
# command stays within 12 minutes on 2 cores. Seconds: each test's own time in a clean clone
# at 3e2af65 (2026-12-07, `--durations`), when the quick set took 16 min 57 s. A node id
# without brackets moves every parametrization of that test.
MOVED_TO_SLOW = (
    "tests/dp/test_onednn_crash_matrix.py::test_dp_step_survives_onednn",  # 57
    "tests/train/test_engine.py::test_resume_equals_uninterrupted_run",  # 50
    "tests/privacy/test_init_privacy.py::test_calibration_targets_the_total_and_refuses_a_spent_budget",  # 43
    "tests/privacy/test_reproducible_mode.py::test_a_private_run_is_not_reproducible_from_its_card",  # 39
    "tests/privacy/test_reproducible_mode.py::test_deterministic_runs_are_reproducible_and_published_as_not_private",  # 34
    "tests/models/test_contract.py::test_tiny_model_clipped_sum_equals_the_naive_loop[nfnet_test]",  # 36
    "tests/models/test_contract.py::test_tiny_model_clipped_sum_equals_the_naive_loop[nf_resnet_test]",  # 15
    "tests/dp/test_clipping.py::test_standardized_kernel_path_equals_naive_loop[nf_resnet_test-shape1-False]",  # 32
    "tests/dp/test_clipping.py::test_standardized_kernel_path_equals_naive_loop[nf_resnet_test-shape1-True]",  # 28
    "tests/models/test_per_example_grads.py::test_vectorized_per_example_grads_equal_a_loop[nfnet_test]",  # 27
    "tests/train/test_cli.py::test_fine_tune_from_haiku_wrn_and_from_a_zoo_name",  # 36 (both)
    "tests/train/test_engine.py::test_ema_and_polyak_follow_the_parameter_trajectory",  # 24
    "tests/train/test_nothing_lost.py::test_a_failed_publish_is_one_line_and_keeps_the_model_with_the_command",  # 29
    "tests/train/test_cli.py::test_the_run_record_binds_the_published_ema_weights",  # 24
    "tests/train/test_cli.py::test_tan_simulation_is_marked",  # 20
    "tests/train/test_cli.py::test_fine_tune_from_keras_model_with_other_class_count",  # 18
    "tests/test_export.py::test_export_command_line",  # 17
    "tests/models/test_nf_models.py::test_serialization_round_trips[nfnet_test]",  # 17
    "tests/train/test_engine.py::test_a_checkpoint_of_an_older_version_resumes_and_another_config_refuses",  # 19
    "tests/train/test_engine.py::test_budget_guard_stops_at_target",  # 19
    "tests/train/test_engine.py::test_target_epsilon_calibrates_sigma",  # 20
    "tests/train/test_keras_private.py::test_noise_once_per_logical_step_whatever_the_micro_batch_size",  # 32
    "tests/train/test_keras_private.py::test_tracks_epsilon_and_refuses_a_fit_over_budget",  # 29
)


def pytest_collection_modifyitems(config, items):
    """Adds the ``slow`` mark to the tests in ``MOVED_TO_SLOW``."""
    for item in items:
        base = item.nodeid.split("[", 1)[0]
        if item.nodeid in MOVED_TO_SLOW or base in MOVED_TO_SLOW:
            item.add_marker(pytest.mark.slow)
