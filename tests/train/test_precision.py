"""``precision="bf16"`` through the engine, ``make_private`` and the training command: the noisy update and
every piece of state stay float32, the noise std is sigma*C/B, and the run record and the card say bf16."""

import json

import keras
import numpy as np
import pytest

import dp_zoo
from dp_zoo import data
from dp_zoo.engine import trainer as engine
from dp_zoo.recipes import config as C
from tests.helpers import TINY_TRAIN_ARGS, train_in_process


@pytest.fixture(scope="module")
def train_set():
    return data.load_dataset(C.DataConfig(), "train")


def test_bf16_update_noise_std_is_sigma_c_over_b_and_state_stays_float32(train_set):
    sigma, c, b, lr = 50.0, 1.0, 64, 1.0
    cfg = C.TrainConfig(model="wrn_test", batch_size=b, physical_batch_size=32, steps=1, seed=3,
                        deterministic=True, precision="bf16", dp=C.DPConfig(noise_multiplier=sigma, l2_clip=c),
                        ema=C.EMAConfig(decay=0.9), optim=C.OptimConfig(learning_rate=lr, momentum=0.9))
    keras.utils.set_random_seed(0)
    t = engine.Trainer(dp_zoo.create_model("wrn_test", num_classes=10), cfg, train_set, progress=False,
                       write_run_dir=False)
    before = np.concatenate([v.numpy().ravel() for v in t.model.trainable_variables])
    record = t.fit()
    after = np.concatenate([v.numpy().ravel() for v in t.model.trainable_variables])
    # First step of momentum SGD: w -= lr * update. The clipped mean is at most C/B per step; sigma=50
    # makes the noise dominate, so the std of the change is the noise's: sigma*C/B, drawn in float32.
    want = lr * sigma * c / b
    assert abs(np.std(after - before) - want) / want < 0.05
    state = t.model.variables + t.optimizer.variables + t.ema_vars
    assert {keras.backend.standardize_dtype(v.dtype) for v in state} - {"int64", "int32"} == {"float32"}
    assert {layer.compute_dtype for layer in t.model._flatten_layers()} == {"float32"}
    assert record["config"]["precision"] == "bf16"


@pytest.mark.slow  # ~20 s of tracing on 2 cores; the engine test above covers the quick set
def test_make_private_bf16_trains_in_float32_state_and_refuses_an_unknown_precision():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=64)
    keras.utils.set_random_seed(0)
    inner = dp_zoo.create_model("wrn_test", num_classes=10)
    with pytest.raises(ValueError, match="'fp8' is not supported"):
        dp_zoo.make_private(inner, l2_clip=1.0, noise_multiplier=1.0, dataset_size=64, batch_size=32,
                            precision="fp8")
    private = dp_zoo.make_private(inner, l2_clip=1.0, noise_multiplier=1.0, dataset_size=64, batch_size=32,
                                  physical_batch_size=32, seed=1, precision="bf16")
    private.compile(optimizer=keras.optimizers.SGD(0.5))
    before = [v.numpy().copy() for v in inner.trainable_variables]
    private.fit(x, y, steps=1, verbose=0)
    assert private.ledger.steps == 1
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, inner.trainable_variables))
    assert {keras.backend.standardize_dtype(v.dtype) for v in inner.variables + private._acc} == {"float32"}
    assert inner(x[:2]).dtype == "float32"  # the user's model predicts in its own policy afterwards


@pytest.mark.slow  # a whole (2-step) training run with evaluation and export, ~30 s on 2 cores
def test_cli_bf16_run_records_and_publishes_precision(tmp_path, capsys):
    code = train_in_process(*TINY_TRAIN_ARGS, "--precision", "bf16", "--run-dir", str(tmp_path / "r"),
                            "--publish-dir", str(tmp_path / "pub"))
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    rec = json.load(open(tmp_path / "r" / "run_record.json"))
    assert rec["config"]["precision"] == "bf16" and rec["steps_completed"] == 2
    card = json.load(open(tmp_path / "pub" / "card.json"))
    assert card["training"]["precision"] == "bf16" and card["config"]["precision"] == "bf16"
    assert "| precision | bf16 (Keras mixed_bfloat16" in (tmp_path / "pub" / "README.md").read_text()
    # The published model computes in float32 (its weights always were).
    model = dp_zoo.load(str(tmp_path / "pub"))
    assert {layer.compute_dtype for layer in model._flatten_layers()} == {"float32"}
