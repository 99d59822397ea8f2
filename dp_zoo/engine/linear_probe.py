"""Linear probing: DP-SGD on the classifier alone, fed with the frozen backbone's features.

``--linear-probe`` (``TrainConfig.linear_probe``, with ``trainable="head"``)
trains exactly what ``--trainable head`` trains, the classifier, but
computes the backbone once instead of at every step (Mehta et al. 2022,
"Large Scale Transfer Learning for Differentially Private Image
Classification"):

1. ``features``: the classifier's input (the penultimate layer's output) of
   every training example's K views, and of every evaluation example's
   un-augmented image, with the backbone in inference mode. The K views are
   made by the run's augmentation with seeds derived from the public seed
   (augmentation is public randomness), once: unlike full fine-tuning,
   every step sees the same K views of an example.
2. They are cached in the run directory (``features/<split>.npz`` and its
   ``.json``, written atomically, the ``.json`` last: the commit point with
   the npz's SHA-256 and an identity of everything the features depend on).
   A resume uses a cache only when both match; anything else (a crash during
   extraction, another init or augmentation) is recomputed, never trusted.
   The cache is private data, like the rest of the run directory.
3. The engine trains ``head_model`` (a copy of the classifier layer) on a
   ``FeatureSet``: same Poisson sampling over examples, same per-example
   clipping (an example's gradient is the mean over its K views' features'
   gradients, as augmult does), same noise and accounting.
4. ``assemble`` writes the trained classifier back into the full network,
   which is what is published.
"""

import hashlib
import io
import json
import os

import keras
import numpy as np

from dp_zoo import preprocessing
from dp_zoo.engine import checkpoint, record_builder, trainable

CACHE_VERSION = 1
# Features are computed in chunks of about this many images (views included).
_CHUNK_IMAGES = 256
# Keeps the extraction's augmentation seeds apart from the training step's.
_SEED_PURPOSE = 3


class FeatureSet:
    """A split as features: ``images`` is float32 ``[N, K, D]`` (K views), used as the views as they are."""

    features = True

    def __init__(self, features, like):
        self.images = features
        self.labels = like.labels
        self.num_classes = like.num_classes
        self.name = like.name
        self.split = like.split
        self.mean, self.std = (0.0,), (1.0,)  # unused: features are not images

    def __len__(self):
        return len(self.labels)

    @property
    def input_shape(self):
        return (int(self.images.shape[-1]),)


def backbone(model):
    """``model`` up to its classifier: a Keras model whose output is the classifier's input."""
    head = trainable.classifier_layer(model)
    try:
        # One input as a tensor, not a list, so that it is called as the model is.
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        return keras.Model(inputs, head.input, name=f"{model.name}_backbone")
    except (AttributeError, ValueError, TypeError):
        raise trainable.TrainableError(
            f"--linear-probe needs a functional Keras model whose classifier is called once; {model.name!r} "
            "is not one. Use --trainable head instead.") from None


def head_model(model):
    """A one-layer model: a copy of ``model``'s classifier with its current weights."""
    head = trainable.classifier_layer(model)
    dim = int(head.input.shape[-1])
    layer = head.__class__.from_config(head.get_config())
    probe = keras.Sequential([keras.Input((dim,)), layer], name=f"{model.name}_head")
    layer.set_weights(head.get_weights())
    return probe


def assemble(model, weights):
    """Writes classifier ``weights`` (the head model's, in its variable order) into ``model``; returns it."""
    head = trainable.classifier_layer(model)
    for v, w in zip(head.weights, weights):
        v.assign(w)
    return model


def extract(net, dataset, *, mean, std, augment_fn=None, num_views=1, seed=0):
    """Features ``[N, K, D]`` of ``dataset``'s images (K views by ``augment_fn``, else K=1 plain views)."""
    import tensorflow as tf

    from dp_zoo.engine import step as step_lib

    k = int(num_views) if augment_fn is not None else 1
    chunk = max(1, _CHUNK_IMAGES // k)
    out = []
    for c, i in enumerate(range(0, len(dataset), chunk)):
        x = preprocessing.normalize(dataset.images[i:i + chunk], mean, std)
        if augment_fn is not None:
            x = augment_fn(x, step_lib.step_seed(seed, c, _SEED_PURPOSE))
            b = tf.shape(x)[0]
            x = tf.reshape(x, tf.concat([[b * k], tf.shape(x)[2:]], 0))
        f = net(x, training=False)
        out.append(np.asarray(f, np.float32).reshape(-1, k, f.shape[-1]))
    return np.concatenate(out, 0)


def backbone_sha256(net):
    """SHA-256 of the backbone's weights (float bytes, in order): the features depend on all of them."""
    h = hashlib.sha256()
    for v in net.weights:
        h.update(np.ascontiguousarray(v.numpy()).tobytes())
    return h.hexdigest()


def identity(config, weights_sha256, split, n):
    """A digest of everything a split's features depend on: configuration, backbone weights, split."""
    c = config
    key = {"version": CACHE_VERSION, "model": c.model, "model_kwargs": [list(kv) for kv in c.model_kwargs],
           "init": c.init_checkpoint, "data": c.data.__dict__, "augmult": c.augmult.__dict__, "seed": c.seed,
           "split": split, "n": int(n), "backbone_sha256": weights_sha256}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _paths(run_dir, split):
    base = os.path.join(run_dir, "features", split)
    return base + ".npz", base + ".json"


def load_cached(run_dir, split, ident):
    """The cached features of ``split`` if their commit record, checksum and identity all match, else None."""
    npz, meta = _paths(run_dir, split)
    try:
        with open(meta) as f:
            m = json.load(f)
        with open(npz, "rb") as f:
            data = f.read()
    except (OSError, ValueError):
        return None
    if m.get("identity") != ident or m.get("sha256") != hashlib.sha256(data).hexdigest():
        return None
    with np.load(io.BytesIO(data)) as z:
        return z["features"]


def save_cached(run_dir, split, ident, features):
    """Writes the features of ``split`` atomically, the npz first and its ``.json`` (the commit point) last."""
    npz, meta = _paths(run_dir, split)
    os.makedirs(os.path.dirname(npz), exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, features=features)
    data = buf.getvalue()
    if os.path.exists(meta):
        os.remove(meta)  # a new npz must never be vouched for by an old record
    checkpoint.atomic_write_bytes(npz, data)
    checkpoint.atomic_write_json(meta, {"identity": ident, "sha256": hashlib.sha256(data).hexdigest(),
                                        "shape": list(features.shape)})


def feature_sets(model, config, train_set, eval_set, *, augment_fn, run_dir=None, write=True):
    """``(train FeatureSet, evaluation FeatureSet)`` of ``model``'s frozen backbone, from the cache when valid.

    Training features have ``config.augmult.num_views`` views (by
    ``augment_fn``; one plain view when it is None); evaluation features one
    plain view. ``write=False`` (a non-chief worker) reads but never writes
    the cache.
    """
    net = backbone(model)
    weights = backbone_sha256(net)
    out = []
    for split, ds, aug in (("train", train_set, augment_fn), ("eval", eval_set, None)):
        ident = identity(config, weights, f"{split}:{ds.split}", len(ds))
        feats = load_cached(run_dir, split, ident) if run_dir else None
        if feats is None:
            print(f"linear probe: computing the backbone's features of the {split} split ({len(ds)} examples)")
            feats = extract(net, ds, mean=train_set.mean, std=train_set.std, augment_fn=aug,
                            num_views=config.augmult.num_views, seed=config.seed)
            if run_dir and write:
                save_cached(run_dir, split, ident, feats)
        out.append(FeatureSet(feats, ds))
    return tuple(out)


class Probe:
    """A linear-probing run's pieces: the full model, its trained summary, the head model and the feature sets."""

    def __init__(self, model, config, train_set, eval_set, *, augment_fn, run_dir, write, strategy):
        if getattr(train_set, "streaming", False):
            raise trainable.TrainableError(
                "--linear-probe needs the training split in memory (its features are computed in one pass); "
                "drop --streaming, or fine-tune with --trainable head.")
        self.model = model
        self.trained = trainable.apply(model, trainable.HEAD)
        with strategy.scope():
            self.head = head_model(model)
        self.train, self.eval = feature_sets(model, config, train_set, eval_set, augment_fn=augment_fn,
                                             run_dir=run_dir, write=write)
        self.input_shape = tuple(train_set.input_shape)

    def complete_record(self, record):
        """The record's ``model`` section describes the full network (what is published), not the head model
        (``RunRecordBuilder.set_model_override`` on ``record``, in place; returns it)."""
        return record_builder.RunRecordBuilder.from_record(record).set_model_override(
            num_params=self.model.count_params(), input_shape=self.input_shape, trained=self.trained,
        ).build(check=False)

    def published(self, weights):
        """A copy of the full network carrying the classifier ``weights`` (the head model's order)."""
        from dp_zoo.engine import evaluation

        return evaluation.model_copy(self.model, self.input_shape, weights)
