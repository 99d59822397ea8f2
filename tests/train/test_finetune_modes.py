"""Fine-tuning modes (#19): --trainable head / REGEX and --linear-probe.

What trains must be exactly what was selected (every other weight bit-identical), linear probing must
compute the same clipped sums as head-only training, BatchNorm must be frozen, bad selections are
one-line errors, and the record and card say what trained.
"""

import json
import os

import keras
import numpy as np
import pytest

import dp_zoo
from dp_zoo import data
from dp_zoo.dp import clipped_grad_sum
from dp_zoo.engine import trainer as engine, linear_probe, trainable
from dp_zoo.recipes import config as C
from tests.helpers import TINY_TRAIN_ARGS, clip_and_sum, naive_per_example_grads, train_in_process


@pytest.fixture(scope="module")
def train_set():
    return data.load_dataset(C.DataConfig(), "train")


def cfg(**kw):
    base = dict(model="wrn_test", batch_size=64, physical_batch_size=64, steps=2, seed=3, deterministic=True,
                checkpoint_every=10, dp=C.DPConfig(noise_multiplier=1.0, l2_clip=1.0),
                ema=C.EMAConfig(decay=None), optim=C.OptimConfig(learning_rate=0.5))
    base.update(kw)
    return C.TrainConfig(**base)


def _snapshot(model):
    return {v.path: v.numpy().copy() for v in model.weights}


def _changed(model, before):
    return sorted(v.path for v in model.weights if not np.array_equal(before[v.path], v.numpy()))


def test_head_only_training_changes_only_the_classifier(train_set):
    """(A regex selection is checked the same way on the BatchNorm model below.)"""
    keras.utils.set_random_seed(0)
    model = dp_zoo.create_model("wrn_test", num_classes=10)
    n_all = len(model.trainable_variables)
    before = _snapshot(model)
    record = engine.Trainer(model, cfg(trainable="head", steps=1), train_set, progress=False).fit()
    expect = ["logits/bias", "logits/kernel"]
    assert _changed(model, before) == expect
    trained = record["model"]["trained"]
    assert (trained["spec"], trained["patterns"], trained["variables"], trained["variables_total"]) == (
        "head", ["logits"], 2, n_all)
    assert trained["params"] == sum(before[p].size for p in expect)


def test_linear_probe_equals_head_only_clipped_sums():
    """Same batch, two views each (no random augmentation): the probe's clipped sum on cached features is
    head-only training's, and both average the views' gradients before clipping."""
    keras.utils.set_random_seed(1)
    model = dp_zoo.create_model("wrn_test", num_classes=10)
    trainable.apply(model, "head")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 8, 8, 1)).astype(np.float32)
    views = np.stack([x, x[:, :, ::-1]], axis=1)  # [B, 2, H, W, C]
    y = rng.integers(0, 10, size=6)
    mask = np.array([1, 1, 1, 1, 1, 0], np.float32)
    full, norms = clipped_grad_sum(model, views, y, l2_clip=0.05, mask=mask)
    assert np.sum(norms.numpy()[:5] > 0.05) >= 3  # clipping is active for most rows
    net = linear_probe.backbone(model)
    feats = np.asarray(net(views.reshape(12, 8, 8, 1), training=False)).reshape(6, 2, -1)
    probe = linear_probe.head_model(model)
    got, probe_norms = clipped_grad_sum(probe, feats, y, l2_clip=0.05, mask=mask)
    np.testing.assert_allclose(probe_norms.numpy(), norms.numpy(), rtol=1e-5)
    for a, b in zip(got, full):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    # Not one view's gradient: with the flipped view dropped the sums differ.
    one, _ = clipped_grad_sum(probe, feats[:, :1], y, l2_clip=0.05, mask=mask)
    assert not np.allclose(one[0].numpy(), got[0].numpy(), rtol=1e-3)


def test_partial_fine_tune_clips_over_the_trained_variables_only():
    """A regex over a WS model (its frozen WS layers leave the fast path): each example's gradient is clipped
    by its norm over the trained variables alone, as the naive per-example loop on those variables says."""
    keras.utils.set_random_seed(0)
    model = dp_zoo.create_model("nf_resnet_test", num_classes=10, input_shape=(16, 16, 3))
    full = dp_zoo.create_model("nf_resnet_test", num_classes=10, input_shape=(16, 16, 3))
    full.set_weights(model.get_weights())
    trainable.apply(model, "stage4|logits")
    picked = [i for i, v in enumerate(full.trainable_variables) if "stage4" in v.path or "logits" in v.path]
    assert 0 < len(picked) < len(full.trainable_variables)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 10, 3)
    naive = [[g[i] for i in picked] for g in naive_per_example_grads(full, x, y)]
    want, want_norms = clip_and_sum(naive, 0.1, [1.0, 1.0, 1.0])
    got, norms = clipped_grad_sum(model, x, y, l2_clip=0.1)
    assert np.all(want_norms > 0.1)  # every example is clipped, by its trained-variable norm
    np.testing.assert_allclose(norms.numpy(), want_norms, rtol=1e-4)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-3, atol=1e-6)


def _bn_model():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))


def test_batchnorm_is_refused_unless_frozen(train_set):
    with pytest.raises(trainable.TrainableError, match="'bn' is BatchNormalization.*frozen"):
        engine.Trainer(_bn_model(), cfg(), train_set, progress=False)
    with pytest.raises(trainable.TrainableError, match="BatchNormalization"):
        trainable.apply(_bn_model(), "bn|logits")
    model = _bn_model()
    before = _snapshot(model)
    engine.Trainer(model, cfg(trainable="conv|logits", steps=1), train_set, progress=False).fit()
    # Frozen, BatchNorm runs in inference mode: neither its weights nor its moving statistics move.
    assert _changed(model, before) == ["conv/bias", "conv/kernel", "logits/bias", "logits/kernel"]


def test_bad_selections_are_clear_errors():
    model = dp_zoo.create_model("wrn_test", num_classes=10)
    with pytest.raises(trainable.TrainableError, match="not a valid regular expression"):
        trainable.select(model, "stage(")
    with pytest.raises(trainable.TrainableError, match="matches no trainable variable.*stem_conv/kernel"):
        trainable.select(model, "no_such_layer")
    inputs = keras.Input((4,))
    no_head = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(3)(inputs)))
    with pytest.raises(trainable.TrainableError, match="cannot identify the classifier"):
        trainable.select(no_head, "head")


@pytest.mark.parametrize("flags,match", [(["--trainable", "stage("], "not a valid regular expression"),
                                         (["--linear-probe", "--trainable", "all"], "classifier only"),
                                         (["--trainable", "no_such_layer"], "matches no trainable variable")])
def test_cli_refuses_bad_selections_in_one_line(flags, match, capsys, tmp_path):
    code = train_in_process(*TINY_TRAIN_ARGS, "--run-dir", str(tmp_path / "run"), "--nopublish", *flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0], err


def test_feature_cache_is_trusted_only_when_intact(tmp_path):
    feats = np.arange(24, dtype=np.float32).reshape(3, 2, 4)
    linear_probe.save_cached(str(tmp_path), "train", "id-1", feats)
    np.testing.assert_array_equal(linear_probe.load_cached(str(tmp_path), "train", "id-1"), feats)
    assert linear_probe.load_cached(str(tmp_path), "train", "id-2") is None  # another backbone/config
    npz = tmp_path / "features" / "train.npz"
    npz.write_bytes(npz.read_bytes()[:-7])  # torn write
    assert linear_probe.load_cached(str(tmp_path), "train", "id-1") is None
    os.remove(tmp_path / "features" / "train.json")  # crash before the commit record
    assert linear_probe.load_cached(str(tmp_path), "train", "id-1") is None


# Genuine end-to-end runs (the CLI, publishing, a resume): the slow set.
@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    args = [*TINY_TRAIN_ARGS, "--augmult", "2", "--run-dir", str(root / "run"), "--publish-dir", str(root / "pub"),
            "--linear-probe", "--seed", "5"]
    assert train_in_process(*args) == 0
    return root, args


@pytest.mark.slow
def test_linear_probe_run_publishes_the_full_network_with_only_the_classifier_trained(probe_run):
    root, _ = probe_run
    keras.utils.set_random_seed(5)  # the run's initialisation (--seed 5)
    init = dp_zoo.create_model("wrn_test", num_classes=10, input_shape=(8, 8, 1))
    published = dp_zoo.load(str(root / "pub"), include_preprocessing=False)
    before = _snapshot(init)
    assert _changed(published, before) == ["logits/bias", "logits/kernel"]
    assert len(published.trainable_variables) == len(init.trainable_variables)  # published unfrozen
    feats = np.load(root / "run" / "features" / "train.npz")["features"]
    assert feats.shape == (1437, 2, init.get_layer("logits").input.shape[-1])


@pytest.mark.slow
def test_linear_probe_record_and_card_say_what_trained(probe_run, capsys):
    root, args = probe_run
    record = json.loads((root / "run" / "run_record.json").read_text())
    assert record["config"]["linear_probe"] and record["config"]["trainable"] == "head"
    trained = record["model"]["trained"]
    assert trained["patterns"] == ["logits"] and trained["variables"] == 2
    assert record["model"]["input_shape"] == [8, 8, 1]
    assert record["model"]["num_params"] == trained["params_total"] > trained["params"]
    card = (root / "pub" / "README.md").read_text()
    assert "| trained variables | the classifier (layer `logits`): 2 of" in card and "linear probe" in card
    # A resume reuses the verified cache instead of recomputing the features.
    capsys.readouterr()
    assert train_in_process(*args, "--overwrite") == 0
    assert "computing the backbone's features" not in capsys.readouterr().out


def test_make_private_trains_only_the_head():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.Dense(8, name="hidden")(inputs)))
    before = _snapshot(model)
    with pytest.warns(UserWarning, match="NOT differentially private"):  # seed=: reproducible
        private = dp_zoo.make_private(model, l2_clip=1.0, dataset_size=32, batch_size=8, noise_multiplier=1.0,
                                      physical_batch_size=8, seed=0, trainable="head")
    private.compile(optimizer=keras.optimizers.SGD(0.5))
    rng = np.random.default_rng(0)
    private.fit(rng.normal(size=(32, 4)).astype(np.float32), rng.integers(0, 3, 32), steps=2, verbose=0)
    assert _changed(model, before) == ["logits/bias", "logits/kernel"]


def test_card_row_states_the_trained_variables():
    from dp_zoo.cards.markdown import _trained

    row = _trained({"spec": "stage4|logits", "patterns": ["stage4|logits"], "variables": 5,
                    "variables_total": 57, "params": 900, "params_total": 35510}, {"linear_probe": False})
    assert row == "variables matching `stage4\\|logits`: 5 of 57 variables, 900 of 35510 parameters"
    assert _trained(None, {}) == "all"  # records written before fine-tuning modes trained everything


@pytest.mark.parametrize("flags,trainable_spec,probe,suffix", [
    (["--linear-probe"], "head", True, "_linear_probe"),
    (["--trainable", "head"], "head", False, "_head"),
    (["--trainable", "stage3|logits"], "stage3|logits", False, "_partial"),
])
def test_cli_flags_set_the_config_and_name_the_run(flags, trainable_spec, probe, suffix):
    from dp_zoo.commands import train as cli

    name, config, _ = cli.resolve(cli._parser().parse_args(["--recipe", "wrn_digits_eps8", *flags]))
    assert (config.trainable, config.linear_probe, name) == (trainable_spec, probe, "wrn_digits_eps8" + suffix)
    # The recipes' probes: same privacy as their fine-tune, the classifier on features.
    lp = cli.recipes.get("wrn28_10_cifar10_finetune_eps8_linear_probe").config
    ft = cli.recipes.get("wrn28_10_cifar10_finetune_eps8").config
    assert (lp.trainable, lp.linear_probe) == ("head", True)
    assert (lp.dp, lp.steps, lp.batch_size, lp.augmult) == (ft.dp, ft.steps, ft.batch_size, ft.augmult)
