"""Publishing a trained model: ``saved_models/<entry>/`` with its card.

Layout::

    saved_models/<entry>/
      model.keras            Keras 3 model (normalized float input -> logits)
      saved_model/1/         TF Serving layout; serving_default takes uint8
                             images [N, H, W, C] (preprocessing in the graph)
                             and returns {"probabilities", "logits"}
      card.json README.md card.html
      MANIFEST.json          SHA-256 and size of every other file

The SavedModel loads with ``tf.saved_model.load``, ``tensorflow_hub.load``,
``keras.layers.TFSMLayer`` and TF Serving / ``saved_model_cli``.

Publishing is atomic (written to a temporary sibling directory, then
renamed), refuses to overwrite an existing artifact unless asked, and refuses
a model with non-finite weights.
"""

import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from dp_zoo import preprocessing
from dp_zoo.model_card import ModelCard

SERVING_VERSION = "1"


class _Serving(tf.Module):
    """uint8 images -> normalized -> model -> probabilities and logits."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.model = model
        # Track the underlying tf.Variables explicitly: Keras 3 variables are
        # not tf.Module-trackable, and without this the SavedModel's restore
        # ops miss them (TF1-style loaders such as saved_model_cli and TF
        # Serving would then fail with "resource does not exist").
        self.model_variables = [v.value for v in model.variables]
        self._mean = tuple(float(m) for m in mean)
        self._std = tuple(float(s) for s in std)
        h, w, c = model.input_shape[1:]
        self.serve = tf.function(
            self._serve,
            input_signature=[tf.TensorSpec([None, h, w, c], tf.uint8, name="images")],
        )

    def _serve(self, images):
        x = preprocessing.normalize(images, self._mean, self._std)
        logits = self.model(x, training=False)
        return {"probabilities": tf.nn.softmax(logits, axis=-1), "logits": logits}


def sha256_file(path):
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory):
    """Writes MANIFEST.json (sha256 + size of every file) and returns its sha256."""
    files = {}
    for root, _, names in os.walk(directory):
        for n in sorted(names):
            p = os.path.join(root, n)
            rel = os.path.relpath(p, directory)
            if rel == "MANIFEST.json":
                continue
            files[rel] = {"sha256": sha256_file(p), "bytes": os.path.getsize(p)}
    path = os.path.join(directory, "MANIFEST.json")
    with open(path, "w") as f:
        json.dump({"files": dict(sorted(files.items()))}, f, indent=2)
    return sha256_file(path)


def verify_manifest(directory):
    """Checks every file against MANIFEST.json.

    Raises:
      ValueError: naming the first missing, truncated or modified file.
    """
    path = os.path.join(directory, "MANIFEST.json")
    if not os.path.exists(path):
        raise ValueError(f"{directory} has no MANIFEST.json; re-export it with dp_zoo.export.")
    with open(path) as f:
        manifest = json.load(f)["files"]
    for rel, meta in manifest.items():
        p = os.path.join(directory, rel)
        if not os.path.exists(p):
            raise ValueError(f"Artifact file missing: {p}. Re-download or re-export the model.")
        if os.path.getsize(p) != meta["bytes"]:
            raise ValueError(
                f"Artifact file truncated or changed: {p} has {os.path.getsize(p)} bytes, "
                f"expected {meta['bytes']}. Refusing to load it; re-download or re-export the model."
            )
        if sha256_file(p) != meta["sha256"]:
            raise ValueError(
                f"Checksum mismatch for {p}: the file was modified or corrupted. "
                "Refusing to load it; re-download or re-export the model."
            )


def export_model(model, run_record, out_dir, *, entry_name, overwrite=False, zoo_points=None):
    """Publishes ``model`` with its card into ``out_dir``.

    Args:
      model: the Keras model (normalized input -> logits) with the weights to
        publish (e.g. EMA weights).
      run_record: the complete run record (with "data" mean/std and
        "metrics").
      out_dir: target directory (e.g. ``saved_models/<entry>``).
      entry_name: the zoo entry name written into the card.
      overwrite: replace an existing artifact.
      zoo_points: optional [(epsilon, accuracy)] for the card's
        privacy-utility plot.

    Returns:
      The SHA-256 of the written MANIFEST.json.
    """
    for w in model.get_weights():
        if not np.all(np.isfinite(w)):
            raise ValueError(
                "Refusing to publish a model with non-finite (NaN/inf) weights; "
                "the run diverged. Lower the learning rate and retrain."
            )
    data = run_record.get("data") or {}
    if "mean" not in data or "std" not in data:
        raise ValueError("run_record['data'] needs the training mean/std for the serving preprocessing.")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(
            f"{out_dir} already exists; pass overwrite=True (--overwrite) to replace it, "
            "or choose another directory."
        )
    card = ModelCard.from_run(entry_name, run_record)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", dir=parent)
    try:
        model.save(os.path.join(tmp, "model.keras"))
        serving = _Serving(model, data["mean"], data["std"])
        tf.saved_model.save(
            serving,
            os.path.join(tmp, "saved_model", SERVING_VERSION),
            signatures={"serving_default": serving.serve},
        )
        card.write(tmp, zoo_points=zoo_points)
        with open(os.path.join(tmp, "run_record.json"), "w") as f:
            json.dump(run_record, f, indent=2, sort_keys=True)
        digest = write_manifest(tmp)
        if os.path.exists(out_dir):
            old = out_dir + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
        return digest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
