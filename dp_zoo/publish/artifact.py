"""Writing an artifact (``export_model``), checking it, and releasing it (``package``, ``publish``).

The layout and the checks are described in ``dp_zoo.export``.
"""

import gzip
import json
import os
import re
import shutil
import tarfile
import tempfile

import numpy as np
import tensorflow as tf

from dp_zoo import preprocessing
from dp_zoo.cards import check as card_check
from dp_zoo.cards.model_card import ModelCard
from dp_zoo.cards.run_record import PUBLISHED_WEIGHTS_SHA256
from dp_zoo.publish import manifest

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
        spec = [tf.TensorSpec([None, h, w, c], tf.uint8, name="images")]
        self.serve = tf.function(self._serve, input_signature=spec)
        # hub.load(path)(images) calls __call__; give it the same function.
        self.__call__ = self.serve

    def _serve(self, images):
        x = preprocessing.normalize(images, self._mean, self._std)
        logits = tf.cast(self.model(x, training=False), tf.float32)
        return {"probabilities": tf.nn.softmax(logits, axis=-1), "logits": logits}


# -- export ------------------------------------------------------------------------


def check_publishable(model, run_record):
    """Refuses a model that is broken or does not match its run record.

    Raises:
      ValueError: non-finite weights, or input shape / classes / parameter
        count / normalization statistics that differ from the record (a
        card describing another model would be a false statement).
    """
    for v in model.weights:
        if not np.all(np.isfinite(np.asarray(v))):
            raise ValueError(
                f"Refusing to publish a model with non-finite (NaN/inf) weights (first in {v.path!r}); "
                "the run diverged. Lower the learning rate and retrain."
            )
    rec_model = run_record.get("model") or {}
    data = run_record.get("data") or {}
    if "mean" not in data or "std" not in data:
        raise ValueError("run_record['data'] needs the training mean/std for the serving preprocessing.")
    in_shape = list(model.input_shape[1:])
    if None in in_shape:
        raise ValueError(f"the model's input shape {model.input_shape} must be fully defined to serve it.")
    c = in_shape[-1]
    problems = []
    if rec_model.get("input_shape") is not None and list(rec_model["input_shape"]) != in_shape:
        problems.append(f"input shape {in_shape} vs record {rec_model['input_shape']}")
    if rec_model.get("num_classes") is not None and model.output_shape[-1] != rec_model["num_classes"]:
        problems.append(f"{model.output_shape[-1]} outputs vs record {rec_model['num_classes']} classes")
    if rec_model.get("num_params") is not None and model.count_params() != rec_model["num_params"]:
        problems.append(f"{model.count_params()} parameters vs record {rec_model['num_params']}")
    if len(data["mean"]) != c or len(data["std"]) != c:
        problems.append(f"{c} input channels vs {len(data['mean'])} mean / {len(data['std'])} std values")
    if problems:
        raise ValueError("The model does not match its run record: " + "; ".join(problems) +
                         ". Export the model that the run trained, with that run's record.")


def _probe_images(model, n=4, seed=0):
    h, w, c = model.input_shape[1:]
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def bind_published_weights(model, run_record):
    """``run_record`` with ``published_weights_sha256`` = the digest of ``model``'s weights (a copy).

    Raises:
      ValueError: the record already names other weights (this is not the
        model the run published).
    """
    digest = manifest.weights_sha256(model.get_weights())
    recorded = run_record.get(PUBLISHED_WEIGHTS_SHA256)
    if recorded is not None and recorded != digest:
        raise ValueError(
            f"The model's weights hash to {digest[:16]}..., but its run record publishes weights with "
            f"{PUBLISHED_WEIGHTS_SHA256} {recorded[:16]}...: this is not the model the run published. Export the "
            f"run's published ({run_record.get('published_weights') or 'last'}) weights with that run's record."
        )
    return {**run_record, PUBLISHED_WEIGHTS_SHA256: digest}


def _check_roundtrip(model, directory, mean, std, digest):
    """The written .keras must hold the published weights (``digest``), and it and the SavedModel must give
    the model's own outputs."""
    import keras

    import dp_zoo.models  # noqa: F401  registers custom layers for load_model

    images = _probe_images(model)
    x = preprocessing.normalize(images, mean, std)
    ref = np.asarray(model(x, training=False), np.float32)
    reloaded = keras.models.load_model(os.path.join(directory, "model.keras"))
    if manifest.weights_sha256(reloaded.get_weights()) != digest:
        raise ValueError("the exported model.keras does not reload with the weights it was saved with (their "
                         "digest differs); not publishing it. A custom layer may not serialize its weights in order.")
    got_keras = np.asarray(reloaded(x, training=False), np.float32)
    served = tf.saved_model.load(os.path.join(directory, "saved_model", SERVING_VERSION))
    got_sm = served.signatures["serving_default"](images=tf.constant(images))["logits"].numpy()
    for what, got in (("model.keras", got_keras), ("saved_model", got_sm)):
        if not np.allclose(got, ref, rtol=1e-4, atol=1e-4):
            raise ValueError(
                f"the exported {what} does not reproduce the model's outputs (max abs diff "
                f"{np.max(np.abs(got - ref)):.3g}); not publishing it. A custom layer may not serialize."
            )


def export_model(model, run_record, out_dir, *, entry_name, overwrite=False, zoo_points=None):
    """Exports ``model`` with its card into ``out_dir`` (atomically).

    Args:
      model: the Keras model (normalized input -> logits) with the weights to
        publish (e.g. the EMA weights; the record's "published_weights" says
        which).
      run_record: the complete run record (schema: docs/design.md),
        with "data" (train mean/std) and "metrics". The artifact's copy
        carries ``published_weights_sha256``, the digest of ``model``'s
        weights (``manifest.weights_sha256``); a record that already has one
        must name these weights.
      out_dir: target directory (e.g. ``saved_models/<entry>``).
      entry_name: the zoo entry name written into the card.
      overwrite: replace an existing artifact.
      zoo_points: points of other models for the card's privacy-utility plot
        (see ``ModelCard.plots``; the callers that know the zoo pass
        ``listing.privacy_utility_points``); none by default.

    Returns:
      The path of the artifact directory (str). Its MANIFEST.json SHA-256 is
      ``manifest.sha256_file(os.path.join(path, manifest.FILENAME))``.

    Raises:
      FileExistsError: ``out_dir`` exists and ``overwrite`` is False, or
        it is not a dp_zoo artifact (``manifest.check_replaceable``: only an
        empty directory or one holding nothing but what its MANIFEST lists
        is ever replaced).
      ValueError: non-finite weights, a model/record mismatch (weights
        other than the record's ``published_weights_sha256`` included), an
        incomplete record, or an export that does not reproduce the model.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.lexists(out_dir) and not overwrite:
        raise FileExistsError(
            f"{out_dir} already exists; pass overwrite=True (--overwrite) to replace it, "
            "or choose another directory."
        )
    manifest.check_replaceable(out_dir)
    check_publishable(model, run_record)
    run_record = bind_published_weights(model, run_record)
    card = ModelCard.from_run_record(entry_name, run_record)
    data = run_record["data"]
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    # A sibling temporary directory keeps the final rename on one file system.
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", dir=parent)
    try:
        model.save(os.path.join(tmp, "model.keras"))
        serving = _Serving(model, data["mean"], data["std"])
        tf.saved_model.save(serving, os.path.join(tmp, "saved_model", SERVING_VERSION),
                            signatures={"serving_default": serving.serve})
        card.write(tmp, zoo_points=zoo_points)
        with open(os.path.join(tmp, "run_record.json"), "w") as f:
            json.dump(run_record, f, indent=2, sort_keys=True)
        _check_roundtrip(model, tmp, data["mean"], data["std"], run_record[PUBLISHED_WEIGHTS_SHA256])
        manifest.write(tmp, entry_name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the published model from other users
        if os.path.lexists(out_dir):
            manifest.check_replaceable(out_dir)  # again: files may have appeared while exporting
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old.", dir=parent)
            os.rmdir(old)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
        return out_dir
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- packaging and publishing -----------------------------------------------------------


def package(artifact_dir, dest):
    """Writes a reproducible ``.tar.gz`` of a verified artifact.

    The archive holds ``<entry>/...`` with sorted names, zeroed times and
    owners, so the same artifact always gives the same archive SHA-256 (the
    value a URL-hosted zoo entry records as ``archive_sha256``).

    Returns:
      (path, sha256 hex) of the archive.
    """
    manifest.verify(artifact_dir)
    name = os.path.basename(os.path.normpath(artifact_dir))
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = dest + ".tmp"
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                paths = []
                for root, dirs, names in os.walk(artifact_dir):
                    dirs.sort()
                    paths += [os.path.join(root, n) for n in sorted(names)]
                for p in paths:
                    rel = os.path.relpath(p, artifact_dir).replace(os.sep, "/")
                    info = tarfile.TarInfo(f"{name}/{rel}")
                    info.size = os.path.getsize(p)
                    info.mode = 0o644
                    info.mtime = 0
                    with open(p, "rb") as f:
                        tar.addfile(info, f)
    os.replace(tmp, dest)
    return dest, manifest.sha256_file(dest)


_KAGGLE_HANDLE = re.compile(r"^[\w-]+/[\w-]+/[\w-]+/[\w.-]+$")


def publish(artifact_dir, *, kaggle_handle, dry_run=True, license_name="Apache 2.0",
            version_notes=None, allow_simulation=False):
    """Publishes a verified artifact to Kaggle Models with ``kagglehub``.

    Args:
      artifact_dir: an exported artifact (``saved_models/<entry>``).
      kaggle_handle: ``<owner>/<model>/<framework>/<variation>``, e.g.
        ``me/dp-zoo/keras/wrn_digits_eps8``.
      dry_run: check everything and return the plan without uploading.
      license_name: the license Kaggle shows.
      version_notes: notes for this version; default: the card's headline.
      allow_simulation: publish a TAN simulation (normally refused: its
        stated epsilon is not a guarantee of the model).

    Returns:
      dict: handle, files (relative path -> bytes), total_bytes,
      manifest_sha256, headline, version_notes, uploaded (bool).

    Raises:
      ValueError: a bad handle, an artifact failing verification (its
        files, or its card against its run record: ``cards.check``), a TAN
        simulation without ``allow_simulation``.
      ImportError: not a dry run and ``kagglehub`` is not installed.
    """
    if not _KAGGLE_HANDLE.match(kaggle_handle or ""):
        raise ValueError(
            f"Kaggle Models handle {kaggle_handle!r} must look like <owner>/<model>/<framework>/<variation>, "
            "e.g. me/dp-zoo/keras/wrn_digits_eps8."
        )
    digest = manifest.verify(artifact_dir)
    with open(os.path.join(artifact_dir, "card.json")) as f:
        card = json.load(f)
    with open(os.path.join(artifact_dir, "run_record.json")) as f:
        card_check.check(card, json.load(f), artifact_dir)  # never publish a card its record does not give
    if card["privacy"].get("tan_simulation") and not allow_simulation:
        raise ValueError(
            f"{artifact_dir} is a TAN simulation (not private at the stated epsilon); refusing to publish it "
            "as a zoo model. Pass allow_simulation=True (--allow-simulation) to publish it anyway."
        )
    files = {k: v["bytes"] for k, v in manifest.listed_files(artifact_dir).items()}
    files[manifest.FILENAME] = os.path.getsize(os.path.join(artifact_dir, manifest.FILENAME))
    plan = {
        "handle": kaggle_handle,
        "artifact_dir": os.path.abspath(artifact_dir),
        "files": files,
        "total_bytes": sum(files.values()),
        "manifest_sha256": digest,
        "headline": card["headline"],
        "version_notes": version_notes or card["headline"],
        "license_name": license_name,
        "uploaded": False,
    }
    if dry_run:
        return plan
    try:
        import kagglehub
    except ImportError as e:
        raise ImportError("publishing to Kaggle Models needs kagglehub: pip install kagglehub") from e
    # kagglehub reads the user's own Kaggle credentials (env or ~/.kaggle);
    # dp_zoo never handles them.
    kagglehub.model_upload(kaggle_handle, plan["artifact_dir"], license_name=license_name,
                           version_notes=plan["version_notes"])
    plan["uploaded"] = True
    return plan
