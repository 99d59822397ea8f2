"""The contract every registered architecture meets (timm-style: parametrised over the registry).

- Every architecture in ``dp_zoo.list_architectures()`` is either a tiny test
  variant (built, run, reloaded in a fresh process, clipped sum checked) or has
  a published parameter count that a built model must match (within 1%).
  A new architecture that is neither fails ``test_every_architecture_is_covered``.
- Tiny variants: forward pass; ``.keras`` and SavedModel written here and
  reloaded in a *fresh process* that imports only ``dp_zoo.models`` give the
  same logits, under every convention a family can be built with (each may
  add its own custom layers, which must load too); DP-SGD's clipped
  per-example gradient sum (default paths: ghost clipping and gain folding
  where they pay) equals a naive per-example loop.
- Published counts: built (weights do not depend on the input resolution, so
  at 32x32) and counted. NFNet-F4..F7 (316M-500M parameters, 1.3-2 GB each)
  are ``very_slow``: run them by hand before a release
  (``python -m pytest -m very_slow tests/models/test_contract.py``).
  NFNet-F3, the model the card's ImageNet fine-tuning recipes start from, is
  built and counted in CI.
"""

import gc
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dp_zoo
from dp_zoo.models.nf_resnet import TIMM_CONVENTIONS
from tests.helpers import assert_equals_naive_loop

# Tiny variants and the input shapes they are tested at.
TINY = {"wrn_test": (8, 8, 1), "wrn_digits": (8, 8, 1), "wrn_mnist": (28, 28, 1), "nf_resnet_test": (16, 16, 3),
        "nfnet_test": (16, 16, 3)}

# Saved and reloaded in a fresh process: every tiny variant, and each family under every convention
# that changes which layers it is built from (label -> architecture, overrides).
RELOAD_CASES = {
    **{name: (name, {}) for name in TINY},
    "wrn_test-skip_init": ("wrn_test", {"skip_init": True}),
    "wrn_test-scale_norm": ("wrn_test", {"scale_norm": True}),
    "nf_resnet_test-timm": ("nf_resnet_test", TIMM_CONVENTIONS["nf_resnet"]),
    "nfnet_test-timm": ("nfnet_test", TIMM_CONVENTIONS["nfnet"]),
}

# Published parameter counts (classes of the published model). WRNs: Zagoruyko & Komodakis 2016 /
# De et al. 2022, CIFAR-10 heads (ScaleNorm adds one GroupNorm per block: +0.1%). NF-ResNets: the
# ResNet counts of He et al. 2016 as timm reports its nf_resnet* (ImageNet heads). NFNets: Brock et al.
# 2021, Table 1 (F0-F6); F7 has no figure in the paper: timm's dm_nfnet-style F7 (499.5M).
PUBLISHED = {
    "wrn16_4": (2.75e6, 10), "wrn16_4_scalenorm": (2.75e6, 10), "wrn40_4": (8.9e6, 10),
    "wrn40_4_scalenorm": (8.9e6, 10), "wrn28_10": (36.5e6, 10),
    "nf_resnet26": (16.0e6, 1000), "nf_resnet50": (25.6e6, 1000), "nf_resnet101": (44.5e6, 1000),
    "nf_resnet152": (60.2e6, 1000), "nf_resnet200": (64.7e6, 1000),
    "nfnet_f0": (71.5e6, 1000), "nfnet_f1": (132.6e6, 1000), "nfnet_f2": (193.8e6, 1000),
    "nfnet_f3": (254.9e6, 1000), "nfnet_f4": (316.1e6, 1000), "nfnet_f5": (377.2e6, 1000),
    "nfnet_f6": (438.4e6, 1000), "nfnet_f7": (499.5e6, 1000),
}
VERY_SLOW = {"nfnet_f4", "nfnet_f5", "nfnet_f6", "nfnet_f7"}
SLOW = {"nfnet_f1", "nfnet_f2", "nfnet_f3", "nf_resnet101", "nf_resnet152", "nf_resnet200"}


def test_every_architecture_is_covered():
    assert set(dp_zoo.list_architectures()) == set(TINY) | set(PUBLISHED)
    assert not set(TINY) & set(PUBLISHED)


def _perturbed(name, shape, num_classes=5, seed=0, **overrides):
    """The tiny model with every weight moved off its initial value (SkipInit gains, zero biases too)."""
    import keras

    keras.utils.set_random_seed(seed)
    m = dp_zoo.create_model(name, num_classes=num_classes, input_shape=shape, **overrides)
    rng = np.random.default_rng(seed)
    m.set_weights([(w + rng.normal(scale=0.2, size=w.shape)).astype("float32") for w in m.get_weights()])
    return m


# The fresh process imports only dp_zoo itself (its lazy top level) and Keras: Keras' own loader must
# then read every family and convention (dp_zoo registers its layers on the loader's first call). A
# failure is reported per model.
RELOAD = textwrap.dedent("""
    import json, sys
    import dp_zoo
    import numpy as np, keras, tensorflow as tf
    out, errors = {}, {}
    for name, d in json.loads(sys.argv[1]).items():
        x = np.load(d + "/x.npy")
        try:
            out[name + "/keras"] = keras.saving.load_model(d + "/m.keras")(x, training=False).numpy()
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}"[:2000]
        served = tf.saved_model.load(d + "/sm")
        out[name + "/saved_model"] = served.serve(x).numpy()
    np.savez(sys.argv[2], **out)
    json.dump(errors, open(sys.argv[3], "w"))
""")


@pytest.fixture(scope="module")
def tiny_reloaded(tmp_path_factory):
    """Each of ``RELOAD_CASES`` saved here (.keras and SavedModel), reloaded in one fresh process.

    Returns (reference logits, reloaded logits, load errors by case).
    """
    root = tmp_path_factory.mktemp("contract")
    dirs, ref = {}, {}
    for name, (arch, overrides) in RELOAD_CASES.items():
        shape = TINY[arch]
        m = _perturbed(arch, shape, **overrides)
        x = np.random.default_rng(1).normal(size=(3,) + shape).astype("float32")
        d = root / name
        d.mkdir()
        np.save(d / "x.npy", x)
        m.save(d / "m.keras")
        m.export(str(d / "sm"), verbose=False)
        ref[name] = m(x, training=False).numpy()
        dirs[name] = str(d)
    r = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(dirs), str(root / "out.npz"),
                        str(root / "errors.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(root / "out.npz")
    return ref, {k: got[k] for k in got.files}, json.loads((root / "errors.json").read_text())


@pytest.mark.slow  # one real process reloading every family and convention: ~60 s on 2 cores
@pytest.mark.parametrize("name", sorted(RELOAD_CASES))
def test_tiny_model_runs_and_reloads_in_a_fresh_process(name, tiny_reloaded):
    ref, got, errors = tiny_reloaded
    assert name not in errors, errors[name]
    assert ref[name].shape == (3, 5) and np.all(np.isfinite(ref[name]))
    assert np.ptp(ref[name], axis=0).max() > 1e-3  # the inputs reach the logits
    np.testing.assert_allclose(got[f"{name}/keras"], ref[name], rtol=1e-5, atol=1e-5)
    # Graph-optimised SavedModel against eager: float32 op-order differences only.
    np.testing.assert_allclose(got[f"{name}/saved_model"], ref[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_clipped_sum_equals_the_naive_loop(name):
    shape = TINY[name]
    m = _perturbed(name, shape, seed=2)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 2) + shape).astype("float32")  # 3 examples, K=2 views
    y = rng.integers(0, 5, size=3).astype("int32")
    mask = np.array([1, 0, 1], np.float32)  # one padding row
    assert_equals_naive_loop(m, x, y, mask, rel=1e-4)  # the defaults: ghost="auto", fold_gain="auto"


def _count_marks(name):
    if name in VERY_SLOW:
        return [pytest.mark.very_slow]
    if name in SLOW:
        return [pytest.mark.slow]
    return []


@pytest.mark.parametrize("name", [pytest.param(n, marks=_count_marks(n)) for n in sorted(PUBLISHED)])
def test_published_parameter_count_of_the_built_model(name):
    import keras

    from dp_zoo.models import nf_resnet, nfnet

    published, classes = PUBLISHED[name]
    m = dp_zoo.create_model(name, num_classes=classes, input_shape=(32, 32, 3))
    try:
        n = m.count_params()
        assert abs(n - published) / published < 0.01, n
        cfg = {**nf_resnet.VARIANTS, **nfnet.VARIANTS}.get(name)
        if cfg is not None:  # the formula that sizes a model without building it agrees exactly
            assert n == nf_resnet.param_count(cfg, num_classes=classes)
    finally:
        del m
        keras.backend.clear_session()
        gc.collect()


def test_a_graph_as_deep_as_nfnet_f7_builds_and_clones():
    """NFNet-F6/F7 are ~2,000 layers deep, and Keras recurses once per layer when it builds,
    clones or loads a functional model; ``import dp_zoo.models`` makes room for that (the
    very_slow F6/F7 counts above failed with RecursionError before). A cheap chain of 2,500
    layers stands in for them here."""
    import keras

    import dp_zoo.models  # noqa: F401

    inputs = keras.Input((4,))
    x = inputs
    for i in range(2500):
        x = keras.layers.Identity(name=f"id{i}")(x)
    model = keras.Model(inputs, x)
    assert len(keras.models.clone_model(model).layers) == 2501
