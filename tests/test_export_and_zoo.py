"""Export, model card and zoo, with a real (tiny) training run behind them."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import dp_zoo
from dp_zoo import export, zoo
from dp_zoo.model_card import ModelCard
from dp_zoo.train import config as C, data, engine
from tests import _zoo_helpers as H


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step private run on digits with a complete run record, exported."""
    train = data.load_dataset(C.DataConfig(), "train")
    test = data.load_dataset(C.DataConfig(), "test")
    cfg = C.TrainConfig(model="wrn_test", batch_size=128, physical_batch_size=64, steps=3,
                        eval_every=1, dp=C.DPConfig(noise_multiplier=1.0, delta=1e-5),
                        ema=C.EMAConfig(decay=0.9), optim=C.OptimConfig(learning_rate=0.5))
    model = dp_zoo.create_model("wrn_test", num_classes=10)
    t = engine.Trainer(model, cfg, train, eval_data=test, progress=False)
    rec = t.fit()
    rec["metrics"] = {"test_accuracy_last": t.evaluate(test, "last")["accuracy"],
                      "test_accuracy_ema": t.evaluate(test, "ema")["accuracy"], "test_accuracy_polyak": None}
    rec["data"] = {"dataset": "digits", "train_split": train.split, "test_split": test.split,
                   "train_size": len(train), "test_size": len(test), "mean": list(train.mean),
                   "std": list(train.std), "public_pretraining_data": None}
    out = tmp_path_factory.mktemp("art") / "wrn_digits_eps8"
    digest = export.export_model(t.model_for("ema"), rec, str(out), entry_name="wrn_digits_eps8")
    return rec, out, digest, test


def test_card_numbers_equal_the_run_record(trained):
    rec, out, _, _ = trained
    card = json.load(open(out / "card.json"))
    # Every number in the privacy, metrics, model and history sections is the record's, exactly.
    for section in ("privacy", "metrics", "model", "history", "data", "config"):
        assert H.numbers(card[section]) == H.numbers(rec[section]), section
    assert card["training"]["augmult_k"] == rec["config"]["augmult"]["num_views"]
    assert card["training"]["logical_batch_size"] == rec["config"]["batch_size"]
    # The epsilon on the card is the accountant's for what ran.
    from dp_zoo import accounting
    eps = accounting.epsilon(noise_multiplier=1.0, sampling_probability=128 / 1437, steps=3, delta=1e-5)
    assert card["privacy"]["epsilon"] == eps
    readme = open(out / "README.md").read()
    assert f"| epsilon (reported accountant) | {eps} |" in readme
    assert "card.html" and "<img" in open(out / "card.html").read()


def test_tan_simulation_card_first_line_says_not_private(trained):
    rec = json.loads(json.dumps(trained[0]))
    rec["privacy"]["tan_simulation"] = {"factor": 16.0, "epsilon_full_run": 1.0,
                                        "noise_multiplier_full_run": 10.0, "batch_size_full_run": 4096.0}
    md = ModelCard.from_run("x", rec).to_markdown()
    body = md.split("---", 2)[2].strip().splitlines()
    assert "not private at the stated epsilon" in body[2]


def test_saved_model_serves_uint8_with_probabilities(trained):
    rec, out, _, test = trained
    sm = tf.saved_model.load(str(out / "saved_model" / "1"))
    res = sm.signatures["serving_default"](images=tf.constant(test.images[:7]))
    assert set(res) == {"probabilities", "logits"}
    np.testing.assert_allclose(res["probabilities"].numpy().sum(1), 1.0, rtol=1e-5)
    m = dp_zoo.load(str(out))
    from dp_zoo.preprocessing import normalize
    ref = m(normalize(test.images[:7], rec["data"]["mean"], rec["data"]["std"])).numpy()
    np.testing.assert_allclose(res["logits"].numpy(), ref, rtol=1e-4, atol=1e-5)


def test_tensorflow_hub_and_tfsmlayer_load(trained):
    import keras
    import tensorflow_hub as hub

    _, out, _, test = trained
    h = hub.load(str(out / "saved_model" / "1"))
    a = h.signatures["serving_default"](images=tf.constant(test.images[:3]))["logits"].numpy()
    layer = keras.layers.TFSMLayer(str(out / "saved_model" / "1"), call_endpoint="serving_default")
    b = layer(tf.constant(test.images[:3]))["logits"].numpy()
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_saved_model_cli_show_and_run(trained, tmp_path):
    _, out, _, test = trained
    cli = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    d = str(out / "saved_model" / "1")
    r = subprocess.run([cli, "show", "--dir", d, "--all"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "serving_default" in r.stdout and "DT_UINT8" in r.stdout and "probabilities" in r.stdout
    np.save(tmp_path / "x.npy", test.images[:2])
    r = subprocess.run([cli, "run", "--dir", d, "--tag_set", "serve", "--signature_def", "serving_default",
                        "--inputs", f"images={tmp_path / 'x.npy'}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "probabilities" in r.stdout


def test_refuses_overwrite_and_nonfinite_weights(trained, tmp_path):
    rec, out, _, _ = trained
    m = dp_zoo.load(str(out))
    before = open(out / "MANIFEST.json").read()
    with pytest.raises(FileExistsError, match="overwrite"):
        export.export_model(m, rec, str(out), entry_name="wrn_digits_eps8")
    assert open(out / "MANIFEST.json").read() == before
    w = m.get_weights()
    w[0] = w[0] * np.nan
    m.set_weights(w)
    with pytest.raises(ValueError, match="non-finite"):
        export.export_model(m, rec, str(tmp_path / "nan"), entry_name="x")
    assert not (tmp_path / "nan").exists()


def test_zoo_load_verifies_checksums(trained, tmp_path, monkeypatch):
    _, out, digest, _ = trained
    home = tmp_path / "home"
    shutil.copytree(out, home / "wrn_digits_eps8")
    monkeypatch.setenv("DP_ZOO_HOME", str(home))
    # Register this artifact in a private copy of the table.
    table = zoo.entries()
    table["wrn_digits_eps8"]["manifest_sha256"] = export.sha256_file(home / "wrn_digits_eps8" / "MANIFEST.json")
    monkeypatch.setattr(zoo, "entries", lambda: table)
    m = dp_zoo.load("wrn_digits_eps8")
    assert m.card["privacy"]["epsilon"] > 0
    assert dp_zoo.card("wrn_digits_eps8")["name"] == "wrn_digits_eps8"
    # Truncate a file: refused, naming the file.
    p = home / "wrn_digits_eps8" / "model.keras"
    data = p.read_bytes()
    p.write_bytes(data[:100])
    with pytest.raises(ValueError, match="model.keras"):
        dp_zoo.load("wrn_digits_eps8")
    p.write_bytes(data)
    # A valid artifact whose manifest differs from the table's is refused too.
    table["wrn_digits_eps8"]["manifest_sha256"] = "0" * 64
    with pytest.raises(ValueError, match="Checksum mismatch"):
        dp_zoo.load("wrn_digits_eps8")


def test_zoo_errors_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("DP_ZOO_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="wrn16_4_cifar10_eps8"):
        dp_zoo.load("wrn16_4_cifar10_eps9")
    with pytest.raises(zoo.ArtifactNotPublishedError, match=re.escape("python -m dp_zoo.train --recipe wrn40_4_cifar10_eps8")):
        dp_zoo.load("wrn40_4_cifar10_eps8")
    rows = {r["name"]: r for r in dp_zoo.list_models()}
    assert rows["wrn40_4_cifar10_eps8"]["published_accuracy"] == 81.4
    assert rows["wrn40_4_cifar10_eps8"]["available"] is False
