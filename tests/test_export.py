"""Export: layout, the uint8 serving signature, hub/TFSMLayer/saved_model_cli loading, safety, publishing."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dp_zoo import export
from dp_zoo import preprocessing
from dp_zoo.commands import export as export_cli
from dp_zoo.publish import manifest
from tests import _zoo_helpers as H

SAVED_MODEL_CLI = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


@pytest.fixture
def art(tiny_artifact):
    """The session's tiny exported artifact (read-only; tests that change it copy it)."""
    return tiny_artifact


def _reference(model, rec, images):
    return np.asarray(model(preprocessing.normalize(images, rec["data"]["mean"], rec["data"]["std"])))


def test_layout_and_manifest(art):
    path, model, rec = art
    for rel in ("model.keras", "saved_model/1/saved_model.pb", "card.json", "README.md", "card.html",
                "run_record.json", "MANIFEST.json", "plots/epsilon_vs_step.png"):
        assert os.path.exists(os.path.join(path, rel)), rel
    written = json.load(open(os.path.join(path, "MANIFEST.json")))
    listed = set(written["files"])
    on_disk = {os.path.relpath(os.path.join(r, n), path) for r, _, ns in os.walk(path) for n in ns} - {"MANIFEST.json"}
    assert listed == on_disk
    for rel, meta in written["files"].items():
        assert manifest.sha256_file(os.path.join(path, rel)) == meta["sha256"]
    assert written["entry"] == "wrn_digits_eps8"
    # The artifact's record is the run's, binding the weights it publishes (manifest.weights_sha256).
    assert json.load(open(os.path.join(path, "run_record.json"))) == {
        **rec, "published_weights_sha256": manifest.weights_sha256(model.get_weights())}
    # no temporary directories left beside the artifact
    assert os.listdir(os.path.dirname(path)) == ["wrn_digits_eps8"]


def test_serving_signature_takes_uint8_and_matches_keras(art):
    path, model, rec = art
    sm = tf.saved_model.load(os.path.join(path, "saved_model", "1"))
    fn = sm.signatures["serving_default"]
    (name, spec), = fn.structured_input_signature[1].items()
    assert name == "images" and spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 8, 8, 1]
    x = H.images(5)
    out = fn(images=tf.constant(x))
    assert set(out) == {"probabilities", "logits"}
    np.testing.assert_allclose(out["logits"].numpy(), _reference(model, rec, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"].numpy(), tf.nn.softmax(out["logits"]).numpy(), rtol=1e-6)


def test_tensorflow_hub_load(art):
    import tensorflow_hub as hub

    path, model, rec = art
    obj = hub.load(os.path.join(path, "saved_model", "1"))
    x = H.images(3)
    a = obj.signatures["serving_default"](images=tf.constant(x))["logits"].numpy()
    b = obj(tf.constant(x))["logits"].numpy()  # __call__ is the same function
    np.testing.assert_allclose(a, _reference(model, rec, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_tfsmlayer_inside_a_keras_model(art):
    import keras

    path, model, rec = art
    layer = keras.layers.TFSMLayer(os.path.join(path, "saved_model", "1"), call_endpoint="serving_default")
    inp = keras.Input((8, 8, 1), dtype="uint8")
    wrapped = keras.Model(inp, layer(inp)["probabilities"])
    x = H.images(4)
    np.testing.assert_allclose(wrapped(x).numpy(), tf.nn.softmax(_reference(model, rec, x)).numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_saved_model_cli_show_and_run(art, tmp_path):
    path, model, rec = art
    d = os.path.join(path, "saved_model", "1")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([SAVED_MODEL_CLI, "show", "--dir", d, "--all"], capture_output=True, text=True,
                       timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    sig = r.stdout.split("signature_def['serving_default']", 1)[1]
    assert "dtype: DT_UINT8" in sig and "shape: (-1, 8, 8, 1)" in sig
    assert "outputs['probabilities']" in sig and "outputs['logits']" in sig
    x = H.images(2)
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run([SAVED_MODEL_CLI, "run", "--dir", d, "--tag_set", "serve", "--signature_def",
                        "serving_default", "--inputs", f"images={tmp_path / 'x.npy'}", "--outdir", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    logits = np.load(tmp_path / "o" / "logits.npy")
    np.testing.assert_allclose(logits, _reference(model, rec, x), rtol=1e-5, atol=1e-5)


def test_rgb_model_gets_a_three_channel_signature(tmp_path):
    path, model, rec = H.exported(tmp_path, name="rgb", channels=3)
    fn = tf.saved_model.load(os.path.join(path, "saved_model", "1")).signatures["serving_default"]
    assert fn.structured_input_signature[1]["images"].shape.as_list() == [None, 8, 8, 3]
    x = H.images(2, channels=3)
    np.testing.assert_allclose(fn(images=tf.constant(x))["logits"].numpy(), _reference(model, rec, x),
                               rtol=1e-5, atol=1e-5)


def test_refuses_overwrite_then_replaces_atomically(art, tmp_path):
    path, model, rec = art
    target = tmp_path / "a"
    shutil.copytree(path, target)
    before = (target / "MANIFEST.json").read_text()
    with pytest.raises(FileExistsError, match="overwrite"):
        export.export_model(model, rec, str(target), entry_name="wrn_digits_eps8", zoo_points=[])
    assert (target / "MANIFEST.json").read_text() == before
    rec2 = json.loads(json.dumps(rec))
    rec2["metrics"]["test_accuracy_last"] = 0.5
    export.export_model(model, rec2, str(target), entry_name="wrn_digits_eps8", overwrite=True, zoo_points=[])
    assert json.load(open(target / "card.json"))["metrics"]["test_accuracy_last"] == 0.5
    manifest.verify(str(target))
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_refuses_nonfinite_weights_and_mismatched_records(tmp_path):
    model = H.tiny_model()
    rec = H.run_record(num_params=model.count_params())
    w = model.get_weights()
    w[0][0, 0, 0, 0] = np.inf
    model.set_weights(w)
    with pytest.raises(ValueError, match="non-finite"):
        export.export_model(model, rec, str(tmp_path / "nan"), entry_name="x", zoo_points=[])
    assert not (tmp_path / "nan").exists()
    model = H.tiny_model()
    with pytest.raises(ValueError, match="parameters vs record"):
        export.export_model(model, H.run_record(num_params=7), str(tmp_path / "m"), entry_name="x", zoo_points=[])
    with pytest.raises(ValueError, match="input shape"):
        export.export_model(model, H.run_record(input_shape=(8, 8, 3), num_params=model.count_params()),
                            str(tmp_path / "m"), entry_name="x", zoo_points=[])
    assert os.listdir(tmp_path) == []


def test_package_is_reproducible_and_publish_dry_run(art, tmp_path):
    path, _, _ = art
    p1, s1 = export.package(path, str(tmp_path / "one.tar.gz"))
    p2, s2 = export.package(path, str(tmp_path / "two.tar.gz"))
    assert s1 == s2 and os.path.getsize(p1) > 0
    plan = export.publish(path, kaggle_handle="someone/dp-zoo/keras/wrn_digits_eps8", dry_run=True)
    assert plan["uploaded"] is False
    assert plan["manifest_sha256"] == manifest.sha256_file(os.path.join(path, "MANIFEST.json"))
    assert "model.keras" in plan["files"] and "saved_model/1/saved_model.pb" in plan["files"]
    assert plan["version_notes"].startswith("(")
    with pytest.raises(ValueError, match="owner"):
        export.publish(path, kaggle_handle="not-a-handle", dry_run=True)


def test_publish_refuses_tan_simulation_and_corrupt_artifacts(tmp_path):
    path, _, _ = H.exported(tmp_path, name="sim", tan=True)
    with pytest.raises(ValueError, match="TAN simulation"):
        export.publish(path, kaggle_handle="me/dp-zoo/keras/sim", dry_run=True)
    assert export.publish(path, kaggle_handle="me/dp-zoo/keras/sim", dry_run=True, allow_simulation=True)
    with open(os.path.join(path, "README.md"), "a") as f:
        f.write("tampered")
    with pytest.raises(ValueError, match="README.md"):
        export.publish(path, kaggle_handle="me/dp-zoo/keras/sim", dry_run=True, allow_simulation=True)


def test_export_command_line(art, tmp_path, capsys):
    """``python -m dp_zoo.export`` in a real process: export, package and a publishing dry run;
    then (in process, the CLI's main with the same flags) a second export onto it: exit 1, one line.
    The real process spells its flags the old (absl) way, which still parses."""
    path, model, rec = art
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = tmp_path / "cli_art"
    r = subprocess.run(
        [sys.executable, "-m", "dp_zoo.export", "--model", os.path.join(path, "model.keras"),
         "--run_record", os.path.join(path, "run_record.json"), "--entry", "wrn_digits_eps8", "--out", str(out),
         "--package", str(tmp_path / "a.tar.gz"), "--kaggle_handle", "me/dp-zoo/keras/wrn_digits_eps8",
         "--dry_run"],
        capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exported:" in r.stdout and "packaged:" in r.stdout and "dry run, would upload" in r.stdout
    manifest.verify(str(out))
    assert json.load(open(out / "card.json"))["privacy"] == rec["privacy"]
    assert export_cli.main(["--model", os.path.join(path, "model.keras"), "--run-record",
                        os.path.join(path, "run_record.json"), "--entry", "wrn_digits_eps8", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("dp_zoo.export: error:")] == [
        ln for ln in err.splitlines() if "already exists" in ln] != []


def test_a_real_runs_record_exports_with_card_numbers_equal_to_it(trained_run):
    """A record written by the engine (3 real DP-SGD steps on digits) exports as is: every number on the
    card is the record's, the epsilon is the accountant's, and the served model is the trained one."""
    from dp_zoo import accounting

    rec, out, test = trained_run["record"], trained_run["artifact"], trained_run["test"]
    card = json.load(open(os.path.join(out, "card.json")))
    for section in ("privacy", "metrics", "model", "history", "data", "config"):
        assert H.numbers(card[section]) == H.numbers(rec[section]), section
    assert card["training"]["augmult_k"] == rec["config"]["augmult"]["num_views"] == 2
    assert card["training"]["logical_batch_size"] == rec["config"]["batch_size"] == 128
    eps = accounting.epsilon(noise_multiplier=1.0, sampling_probability=128 / 1437, steps=3, delta=1e-5)
    assert card["privacy"]["epsilon"] == eps
    assert f"| epsilon (reported accountant) | {eps} |" in open(os.path.join(out, "README.md")).read()
    html = open(os.path.join(out, "card.html")).read()
    assert html.count("<img") == 3 and "data:image/png;base64," in html
    # The uint8 serving signature is the trained (EMA) model on normalized images.
    sm = tf.saved_model.load(os.path.join(out, "saved_model", "1"))
    res = sm.signatures["serving_default"](images=tf.constant(test.images[:7]))
    np.testing.assert_allclose(res["probabilities"].numpy().sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(res["logits"].numpy(), _reference(trained_run["model"], rec, test.images[:7]),
                               rtol=1e-4, atol=1e-5)


def test_refuses_an_export_that_does_not_reproduce_the_model(tmp_path):
    """A custom layer whose config loses a constructor argument reloads as another function: refused."""
    import keras

    @keras.saving.register_keras_serializable(package="dp_zoo_tests")
    class Scale(keras.layers.Layer):
        def __init__(self, factor=1.0, **kw):
            super().__init__(**kw)
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):  # forgets "factor": the reload has factor=1
            config = super().get_config()
            config.pop("factor", None)
            return config

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    model = keras.Model(inp, Scale(3.0)(keras.layers.Dense(10)(x)))
    rec = H.run_record(num_params=model.count_params())
    with pytest.raises(ValueError, match="exported model.keras does not reproduce the model's outputs"):
        export.export_model(model, rec, str(tmp_path / "m"), entry_name="x", zoo_points=[])
    assert os.listdir(tmp_path) == []  # neither the artifact nor its temporary directory is left


def test_weights_digest_is_the_documented_one():
    """manifest.weights_sha256: prefix, then per array "<dtype> <shape>\\n" and its little-endian C-order bytes."""
    import hashlib

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1.5, -2.0], dtype=">f4")  # big-endian input: hashed as its little-endian values
    h = hashlib.sha256(b"dp_zoo weights sha256 v1\n")
    for x in (a, b.astype("<f4")):
        h.update(f"{x.dtype.str} {list(x.shape)}\n".encode())
        h.update(x.tobytes())
    assert manifest.weights_sha256([a, b]) == h.hexdigest()
    # Order, shape and dtype all count.
    others = ([b, a], [a.reshape(3, 2), b], [a.astype(np.float64), b], [a])
    assert len({manifest.weights_sha256(w) for w in others} | {h.hexdigest()}) == 5


def test_the_record_binds_the_published_weights_and_export_checks_them(art, tmp_path):
    import keras

    from dp_zoo.cards import model_card

    path, model, rec = art
    digest = manifest.weights_sha256(model.get_weights())
    written = json.load(open(os.path.join(path, "run_record.json")))
    assert written["published_weights_sha256"] == digest
    # The card binds the record (its SHA-256), the record binds the weights.
    assert json.load(open(os.path.join(path, "card.json")))["run_record_sha256"] == model_card.record_sha256(written)
    reloaded = keras.models.load_model(os.path.join(path, "model.keras"))
    assert manifest.weights_sha256(reloaded.get_weights()) == digest  # the order survives save and load
    with pytest.raises(ValueError, match="published_weights_sha256") as e:
        export.export_model(H.tiny_model(seed=1), written, str(tmp_path / "x"), entry_name="wrn_digits_eps8",
                            zoo_points=[])
    assert "not the model the run published" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()
