"""Haiku weight import: DeepMind's NFNets and jax_privacy's WideResNets (dp_zoo.models.convert).

The expected names and shapes here are generated from the reference code's
naming scheme, written out independently of our exporter:

- DeepMind NFNets: google-deepmind/deepmind-research, nfnets/nfnet.py
  (NFNet.__init__, NFBlock.__init__) and nfnets/base.py (WSConv2D,
  SqueezeExcite), with Haiku's module naming (constructor-made modules join
  with "/~/", the first unnamed instance of a class has no numeric suffix);
- jax_privacy WRNs: google-deepmind/jax_privacy,
  experiments/image_classification/models/cifar.py (WideResNet: every module
  made in __call__, so joined with "/") and common.py (WSConv2D).

The reference forward passes below follow those files' __call__ methods with
TensorFlow ops on the Haiku trees directly, so a swapped mapping (e.g. conv1
and conv1b, which have the same shape) changes the logits and fails.
The released checkpoint files themselves cannot be downloaded here; the file
tests build pickles the way dill + Haiku wrote them (FlatMapping, dill's
array helper, JAX's array reconstruction) without either being installed.
"""

import os
import pickle
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

import dp_zoo
from dp_zoo.models import convert, nf_resnet, nfnet, wide_resnet
from dp_zoo.models.convert import haiku_names

GELU_GAMMA = 1.7015043497085571  # deepmind-research nfnets/base.py


# --- reference naming (from the reference code, not from our exporter) ----

def dm_nfnet_reference_shapes(depths, widths=(256, 512, 1536, 1536), stem=(16, 32, 64, 128),
                              group_size=128, final=None, num_classes=1000, in_ch=3):
    """{module: {param: shape}} of deepmind-research's NFNet(variant with these depths)."""
    p = {}

    def conv(name, k, cin, cout, groups=1):
        p[name] = {"w": (k, k, cin // groups, cout), "gain": (cout,), "bias": (cout,)}

    cin = in_ch
    for i, c in enumerate(stem):
        conv(f"NFNet/~/stem_conv{i}", 3, cin, c)
        cin = c
    ch, index = stem[-1], 0
    for width, depth, stride in zip(widths, depths, (1, 2, 2, 2)):
        for bi in range(depth):
            block = "NFNet/~/nf_block" + (f"_{index}" if index else "")
            s = stride if bi == 0 else 1
            groups = int(width * 0.5) // group_size
            mid = group_size * groups
            conv(f"{block}/~/conv0", 1, ch, mid)
            conv(f"{block}/~/conv1", 3, mid, mid, groups)
            conv(f"{block}/~/conv1b", 3, mid, mid, groups)
            conv(f"{block}/~/conv2", 1, mid, width)
            if s > 1 or ch != width:
                conv(f"{block}/~/conv_shortcut", 1, ch, width)
            hidden = max(1, int(width * 0.5))
            p[f"{block}/~/squeeze_excite/~/linear"] = {"w": (width, hidden), "b": (hidden,)}
            p[f"{block}/~/squeeze_excite/~/linear_1"] = {"w": (hidden, width), "b": (width,)}
            p[block] = {"skip_gain": ()}
            ch, index = width, index + 1
    final = final or 2 * ch
    conv("NFNet/~/final_conv", 1, ch, final)
    p["NFNet/~/linear"] = {"w": (final, num_classes), "b": (num_classes,)}
    return p


# nfnet_test: stem 16 (2/4/8/16), widths 16/32/64/64, group width 8, 128 features.
NFNET_TEST = dict(depths=(1, 1, 1, 1), widths=(16, 32, 64, 64), stem=(2, 4, 8, 16), group_size=8, final=128)


def jp_wrn_reference_shapes(depth, width, num_classes, in_ch=3, stem=16, skip_init=False):
    """{module: {param: shape}} of jax_privacy's WideResNet(depth, width)."""
    p = {}

    def conv(name, k, cin, cout):
        p[f"wide_res_net/{name}"] = {"w": (k, k, cin, cout), "gain": (cout,), "bias": (cout,)}

    def norm(name, c):
        p[f"wide_res_net/{name}"] = {"scale": (c,), "offset": (c,)}

    conv("First_conv", 3, in_ch, stem)
    ch = stem
    for s, w in enumerate((stem * width, 2 * stem * width, 4 * stem * width), 1):
        for i in range((depth - 4) // 6):
            if i == 0:
                norm(f"Block_{s}_skip_norm", ch)
                conv(f"Block_{s}_skip_conv", 1, ch, w)
            for j in range(2):
                norm(f"Block_{s}_norm_{i}_{j}", ch)
                conv(f"Block_{s}Conv_{i}_{j}", 3, ch, w)
                ch = w
            if skip_init:
                p.setdefault("wide_res_net", {})[f"Block_{s}Scale_{i}_1"] = (1,)
    norm("Final_norm", ch)
    p["wide_res_net/Softmax"] = {"w": (ch, num_classes), "b": (num_classes,)}
    return p


def shapes_of(tree):
    return {m: {n: tuple(np.shape(a)) for n, a in params.items()} for m, params in tree.items()}


def random_tree(shapes, seed=0):
    """Random parameters; gains and GN scales near 1, skip gains non-zero (branches active)."""
    rng = np.random.default_rng(seed)
    tree = {}
    for m, params in shapes.items():
        tree[m] = {}
        for n, s in params.items():
            if n in ("gain", "scale"):
                a = 1.0 + 0.2 * rng.normal(size=s)
            elif n == "skip_gain" or "Scale_" in n:
                a = rng.uniform(0.5, 1.5, size=s)
            else:
                a = rng.normal(scale=0.3, size=s)
            tree[m][n] = np.asarray(a, dtype=np.float32)
    return tree


# --- reference forward passes (from the reference __call__ methods) -------

def ws_conv(p, x, stride=1, groups=1):
    w = tf.constant(p["w"])
    mean = tf.reduce_mean(w, axis=(0, 1, 2), keepdims=True)
    var = tf.math.reduce_variance(w, axis=(0, 1, 2), keepdims=True)
    fan_in = float(np.prod(w.shape[:-1]))
    scale = tf.math.rsqrt(tf.maximum(var * fan_in, 1e-4)) * p["gain"]
    w = w * scale - mean * scale
    del groups  # tf.nn.conv2d infers the groups from the kernel's input depth
    return tf.nn.conv2d(x, w, stride, "SAME") + p["bias"]


def dm_gelu(x):
    # DeepMind's jax.nn.gelu defaults to the tanh approximation, and so does
    # our NFNet default ("gelu_tanh"); timm's exact GELU is TIMM_CONVENTIONS'.
    return tf.nn.gelu(x, approximate=True) * GELU_GAMMA


def dm_nfnet_forward(tree, x, depths, widths, alpha=0.2):
    """deepmind-research nfnets/nfnet.py NFNet.__call__ (inference)."""
    out = x
    for i, stride in enumerate((2, 1, 1, 2)):
        out = ws_conv(tree[f"NFNet/~/stem_conv{i}"], out, stride)
        if i < 3:
            out = dm_gelu(out)
    expected_std, index = 1.0, 0
    for width, depth, stage_stride in zip(widths, depths, (1, 2, 2, 2)):
        for bi in range(depth):
            block = "NFNet/~/nf_block" + (f"_{index}" if index else "")
            stride = stage_stride if bi == 0 else 1
            beta = 1.0 / expected_std
            h = dm_gelu(out) * beta
            if stride > 1:
                shortcut = tf.nn.avg_pool2d(h, 2, 2, "SAME")
                shortcut = ws_conv(tree[f"{block}/~/conv_shortcut"], shortcut)
            elif f"{block}/~/conv_shortcut" in tree:
                shortcut = ws_conv(tree[f"{block}/~/conv_shortcut"], h)
            else:
                shortcut = out
            h = ws_conv(tree[f"{block}/~/conv0"], h)
            h = ws_conv(tree[f"{block}/~/conv1"], dm_gelu(h), stride)
            h = ws_conv(tree[f"{block}/~/conv1b"], dm_gelu(h))
            h = ws_conv(tree[f"{block}/~/conv2"], dm_gelu(h))
            se0, se1 = tree[f"{block}/~/squeeze_excite/~/linear"], tree[f"{block}/~/squeeze_excite/~/linear_1"]
            s = tf.reduce_mean(h, axis=(1, 2))
            s = tf.sigmoid(tf.nn.relu(s @ se0["w"] + se0["b"]) @ se1["w"] + se1["b"])
            h = (s[:, None, None, :] * 2) * h
            h = h * tree[block]["skip_gain"]
            out = h * alpha + shortcut
            if bi == 0:
                expected_std = 1.0
            expected_std = (expected_std**2 + alpha**2) ** 0.5
            index += 1
    out = dm_gelu(ws_conv(tree["NFNet/~/final_conv"], out))
    pool = tf.reduce_mean(out, axis=(1, 2))
    return (pool @ tree["NFNet/~/linear"]["w"] + tree["NFNet/~/linear"]["b"]).numpy()


def group_norm(p, x, groups, eps=1e-5):
    n, h, w, c = x.shape
    g = tf.reshape(x, (-1, h, w, groups, c // groups))
    mean, var = tf.nn.moments(g, axes=(1, 2, 4), keepdims=True)
    g = (g - mean) * tf.math.rsqrt(var + eps)
    return tf.reshape(g, (-1, h, w, c)) * p["scale"] + p["offset"]


def jp_wrn_forward(tree, x, depth, groups, skip_init=False):
    """jax_privacy models/cifar.py WideResNet.__call__ (relu, GroupNorm, WSConv2D, skip paths)."""
    t = {k[len("wide_res_net/"):]: v for k, v in tree.items() if k.startswith("wide_res_net/")}
    net = ws_conv(t["First_conv"], x)
    for s, stage_stride in zip((1, 2, 3), (1, 2, 2)):
        strides = stage_stride
        for i in range((depth - 4) // 6):
            skip = net
            if i == 0:
                skip = group_norm(t[f"Block_{s}_skip_norm"], tf.nn.relu(skip), groups)
                skip = ws_conv(t[f"Block_{s}_skip_conv"], skip, strides)
            for j in range(2):
                suffix = f"{i}_{j}"
                strides = strides if suffix == "0_0" else 1
                net = group_norm(t[f"Block_{s}_norm_{suffix}"], tf.nn.relu(net), groups)
                net = ws_conv(t[f"Block_{s}Conv_{suffix}"], net, strides)
            if skip_init:
                net = net * tree["wide_res_net"][f"Block_{s}Scale_{i}_1"]
            net = net + skip
    net = group_norm(t["Final_norm"], tf.nn.relu(net), groups)
    pool = tf.reduce_mean(net, axis=(1, 2))
    return (pool @ t["Softmax"]["w"] + t["Softmax"]["b"]).numpy()


def images(shape, n=2, seed=3):
    return np.random.default_rng(seed).normal(size=(n,) + tuple(shape)).astype("float32")


def randomize(model, seed=1):
    rng = np.random.default_rng(seed)
    model.set_weights([(w + rng.normal(scale=0.2, size=w.shape) + (w.ndim == 0) * 0.7).astype("float32")
                       for w in model.get_weights()])
    return model


def close(a, b, tol=2e-4):
    a, b = np.asarray(a), np.asarray(b)
    assert np.linalg.norm(a - b) <= tol * max(np.linalg.norm(b), 1e-6), (a, b)


# --- NFNets -------------------------------------------------------------------

def test_nfnet_names_and_shapes_are_deepminds():
    m = dp_zoo.create_model("nfnet_test", num_classes=5)
    assert shapes_of(convert.to_deepmind_nfnet(m)) == dm_nfnet_reference_shapes(num_classes=5, **NFNET_TEST)


def test_nfnet_f0_full_size_names_and_count():
    ref = dm_nfnet_reference_shapes((1, 2, 6, 3))
    n = sum(int(np.prod(s)) for params in ref.values() for s in params.values())
    assert n == nf_resnet.param_count(nfnet.VARIANTS["nfnet_f0"], num_classes=1000)
    assert abs(n - 71.5e6) / 71.5e6 < 0.01  # published F0 size
    # Weights do not depend on the resolution: build at 32 px to keep it quick.
    m = dp_zoo.create_model("nfnet_f0", num_classes=1000, input_shape=(32, 32, 3))
    entries, problems, head = haiku_names.deepmind_nfnet_mapping(m)
    assert not problems and head == "NFNet/~/linear"
    got = {}
    for module, name, _, shape, _, _ in entries:
        got.setdefault(module, {})[name] = tuple(shape)
    assert got == ref
    assert "NFNet/~/nf_block_11/~/conv1b" in got and "NFNet/~/nf_block_12" not in got


def test_nfnet_reference_tree_gives_reference_logits():
    tree = random_tree(dm_nfnet_reference_shapes(num_classes=5, **NFNET_TEST))
    m = convert.from_deepmind_nfnet(dp_zoo.create_model("nfnet_test", num_classes=5), tree)
    x = images((32, 32, 3))
    close(m(x).numpy(), dm_nfnet_forward(tree, x, NFNET_TEST["depths"], NFNET_TEST["widths"]))
    # ... and the export gives the same arrays back.
    back = convert.to_deepmind_nfnet(m)
    assert shapes_of(back) == shapes_of(tree)
    for k in tree:
        for n in tree[k]:
            np.testing.assert_array_equal(back[k][n], tree[k][n])


def test_nfnet_round_trip_keeps_weights_and_outputs():
    a = randomize(dp_zoo.create_model("nfnet_test", num_classes=5))
    b = convert.from_deepmind_nfnet(dp_zoo.create_model("nfnet_test", num_classes=5), convert.to_deepmind_nfnet(a))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    x = images((32, 32, 3))
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())


def test_nfnet_flat_form_and_checkpoint_dict_are_accepted():
    tree = random_tree(dm_nfnet_reference_shapes(num_classes=5, **NFNET_TEST))
    flat = {f"{m}/{n}": a for m, params in tree.items() for n, a in params.items()}
    m1 = convert.from_deepmind_nfnet(dp_zoo.create_model("nfnet_test", num_classes=5), flat)
    m2 = convert.from_deepmind_nfnet(dp_zoo.create_model("nfnet_test", num_classes=5),
                                     {"params": tree, "network_state": {}})
    for w1, w2 in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(w1, w2)


def _nfnet_and_tree(num_classes=5):
    return (dp_zoo.create_model("nfnet_test", num_classes=num_classes),
            random_tree(dm_nfnet_reference_shapes(num_classes=5, **NFNET_TEST)))


def _unchanged(model, before):
    for w0, w1 in zip(before, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)


def test_nfnet_missing_key_is_named_and_model_unchanged():
    m, tree = _nfnet_and_tree()
    before = m.get_weights()
    del tree["NFNet/~/nf_block_2/~/conv1b"]["gain"]
    with pytest.raises(ValueError, match=r"missing NFNet/~/nf_block_2/~/conv1b/gain"):
        convert.from_deepmind_nfnet(m, tree)
    _unchanged(m, before)


def test_nfnet_extra_key_is_named():
    m, tree = _nfnet_and_tree()
    tree["NFNet/~/nf_block_9/~/conv0"] = {"w": np.zeros((1, 1, 4, 4), "float32")}
    tree["NFNet/~/nf_block"]["ema"] = np.zeros((), "float32")
    with pytest.raises(ValueError, match=r"unexpected NFNet/~/nf_block/ema, NFNet/~/nf_block_9/~/conv0/w"):
        convert.from_deepmind_nfnet(m, tree)


def test_nfnet_wrong_shape_is_named():
    m, tree = _nfnet_and_tree()
    tree["NFNet/~/stem_conv1"]["w"] = np.zeros((3, 3, 4, 2), "float32")  # OIHW-ish mix-up
    with pytest.raises(ValueError, match=r"NFNet/~/stem_conv1/w: shape \(3, 3, 4, 2\), expected \(3, 3, 2, 4\)"):
        convert.from_deepmind_nfnet(m, tree)


def test_nfnet_other_class_count_is_refused_unless_skip_head():
    m, tree = _nfnet_and_tree(num_classes=3)  # the tree has 5 classes
    before = m.get_weights()
    with pytest.raises(ValueError, match="skip_head=True"):
        convert.from_deepmind_nfnet(m, tree)
    _unchanged(m, before)
    head = [w.copy() for w in (m.get_layer("logits").get_weights())]
    convert.from_deepmind_nfnet(m, tree, skip_head=True)
    for w0, w1 in zip(head, m.get_layer("logits").get_weights()):
        np.testing.assert_array_equal(w0, w1)
    np.testing.assert_array_equal(m.get_layer("final_conv").kernel.numpy(), tree["NFNet/~/final_conv"]["w"])
    # skip_head also accepts a tree without any head (e.g. a feature extractor's).
    del tree["NFNet/~/linear"]
    convert.from_deepmind_nfnet(m, tree, skip_head=True)


def test_non_nfnet_models_are_refused():
    with pytest.raises(ValueError, match="no DeepMind NFNet name for layer 'stem_conv'"):
        convert.to_deepmind_nfnet(dp_zoo.create_model("nf_resnet_test", num_classes=3))
    with pytest.raises(ValueError, match="no DeepMind NFNet name"):
        convert.from_deepmind_nfnet(dp_zoo.create_model("wrn_test", num_classes=3), {})


# --- jax_privacy WideResNets ------------------------------------------------

@pytest.mark.parametrize("skip_init", [False, True])
def test_wrn_names_and_shapes_are_jax_privacys(skip_init):
    m = dp_zoo.create_model("wrn_test", num_classes=3, input_shape=(8, 8, 3), skip_init=skip_init)
    ref = jp_wrn_reference_shapes(10, 1, 3, in_ch=3, stem=4, skip_init=skip_init)
    assert shapes_of(convert.to_haiku_wrn(m)) == ref


def test_wrn28_10_full_size_names():
    m = dp_zoo.create_model("wrn28_10", num_classes=10)  # published 36.5M is the CIFAR-10 model
    entries, problems, head = haiku_names.haiku_wrn_mapping(m)
    assert not problems and head == "wide_res_net/Softmax"
    got = {}
    for module, name, _, shape, _, _ in entries:
        got.setdefault(module, {})[name] = tuple(shape)
    ref = jp_wrn_reference_shapes(28, 10, 10)
    assert got == ref
    n = sum(int(np.prod(s)) for params in ref.values() for s in params.values())
    assert n == m.count_params() and abs(n - 36.5e6) / 36.5e6 < 0.01


@pytest.mark.parametrize("skip_init", [False, True])
def test_wrn_reference_tree_gives_reference_logits(skip_init):
    cfg = wide_resnet.VARIANTS["wrn_test"]
    tree = random_tree(jp_wrn_reference_shapes(cfg.depth, cfg.width, 3, in_ch=3, stem=cfg.stem_channels,
                                               skip_init=skip_init))
    m = dp_zoo.create_model("wrn_test", num_classes=3, input_shape=(8, 8, 3), skip_init=skip_init)
    convert.from_haiku_wrn(m, tree)
    x = images((8, 8, 3))
    close(m(x).numpy(), jp_wrn_forward(tree, x, cfg.depth, cfg.groups, skip_init))


def test_wrn_deeper_reference_logits():
    """Two blocks per stage: the non-first blocks (no skip conv, identity shortcut) map too."""
    tree = random_tree(jp_wrn_reference_shapes(16, 1, 4, in_ch=3, stem=4))
    m = dp_zoo.create_model("wrn_test", num_classes=4, input_shape=(8, 8, 3), depth=16)
    convert.from_haiku_wrn(m, tree)
    x = images((8, 8, 3))
    close(m(x).numpy(), jp_wrn_forward(tree, x, 16, 2))


def test_wrn_round_trip_keeps_weights_and_outputs():
    kw = dict(num_classes=3, input_shape=(8, 8, 3), depth=16)
    a = randomize(dp_zoo.create_model("wrn_test", **kw))
    b = convert.from_haiku_wrn(dp_zoo.create_model("wrn_test", **kw), convert.to_haiku_wrn(a))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    x = images((8, 8, 3))
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())


def test_wrn_old_checkpoint_names_and_fine_tuning_head():
    """jax_privacy's 2022 checkpoints: {"params", "network_state"}, '~norm_fn/' / '~conv_fn/' in names."""
    tree = random_tree(jp_wrn_reference_shapes(10, 1, 10, in_ch=3, stem=4))
    old = {}
    for k, v in tree.items():
        seg = "~norm_fn/" if "norm" in k.rsplit("/", 1)[-1] else "~conv_fn/"
        old[k.replace("wide_res_net/", "wide_res_net/" + seg) if k != "wide_res_net/Softmax" else k] = v
    ckpt = {"params": old, "network_state": {}}
    m = dp_zoo.create_model("wrn_test", num_classes=100, input_shape=(8, 8, 3))
    with pytest.raises(ValueError, match="wide_res_net/Softmax.*skip_head=True"):
        convert.from_haiku_wrn(m, ckpt)
    head = m.get_layer("logits").get_weights()
    convert.from_haiku_wrn(m, ckpt, skip_head=True)
    np.testing.assert_array_equal(m.get_layer("stage2_block1_conv1").kernel.numpy(),
                                  tree["wide_res_net/Block_2Conv_0_0"]["w"])
    np.testing.assert_array_equal(m.get_layer("logits").get_weights()[0], head[0])


def test_wrn_errors_are_named():
    m = dp_zoo.create_model("wrn_test", num_classes=3, input_shape=(8, 8, 3))
    tree = random_tree(jp_wrn_reference_shapes(10, 1, 3, in_ch=3, stem=4))
    before = m.get_weights()
    bad = {k: dict(v) for k, v in tree.items()}
    bad["wide_res_net/Block_3_norm_0_1"]["scale"] = np.ones((8,), "float32")
    del bad["wide_res_net/Final_norm"]["offset"]
    bad["wide_res_net"] = {"Block_1Scale_0_1": np.zeros((1,), "float32")}  # a skip_init checkpoint
    with pytest.raises(ValueError) as e:
        convert.from_haiku_wrn(m, bad)
    msg = str(e.value)
    assert "unexpected wide_res_net/Block_1Scale_0_1" in msg
    assert "wide_res_net/Block_3_norm_0_1/scale: shape (8,), expected (16,)" in msg
    assert "missing wide_res_net/Final_norm/offset" in msg
    _unchanged(m, before)
    with pytest.raises(ValueError, match="non-empty 'network_state'"):
        convert.from_haiku_wrn(m, {"params": tree, "network_state": {"wide_res_net/bn": {"mean": np.zeros(3)}}})


def test_scalenorm_has_no_jax_privacy_counterpart():
    with pytest.raises(ValueError, match="no jax_privacy WideResNet name for layer 'stage1_block1_scalenorm'"):
        convert.to_haiku_wrn(dp_zoo.create_model("wrn_test", num_classes=3, scale_norm=True))


# --- checkpoint files ---------------------------------------------------------

def test_npz_file_round_trip(tmp_path):
    a = randomize(dp_zoo.create_model("nfnet_test", num_classes=5))
    convert.save_haiku_checkpoint(convert.to_deepmind_nfnet(a), tmp_path / "f.npz")
    loaded = convert.load_haiku_checkpoint(tmp_path / "f.npz")
    b = convert.from_deepmind_nfnet(dp_zoo.create_model("nfnet_test", num_classes=5), loaded)
    x = images((32, 32, 3))
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())


def _fake_module(monkeypatch, name, **attrs):
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        v.__module__ = name
        v.__qualname__ = k
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


def _write_like_dill_and_haiku(monkeypatch, path, tree, array_style="dill", extra=None):
    """Pickles ``tree`` as dill 0.3.x + Haiku (2021-22) did, with stand-in modules.

    Haiku's FlatMapping pickled as ``(haiku._src.data_structures.FlatMapping,
    (dict,))`` (dm-haiku data_structures.py, __reduce__); dill pickled numpy
    arrays as ``dill._dill._create_array(f, args, state, npdict)``; JAX
    arrays pickle as ``jax._src.array._reconstruct_array(fun, args,
    arr_state, aval_state)``.
    """
    with monkeypatch.context() as mp:
        class FlatMapping(dict):
            def __reduce__(self):
                return FlatMapping, (dict(self),)

        def _create_array(f, args, state, npdict=None):
            raise AssertionError("never called while writing")

        def _reconstruct_array(fun, args, arr_state, aval_state):
            raise AssertionError("never called while writing")

        for name in ("haiku", "haiku._src", "dill", "jax", "jax._src"):
            _fake_module(mp, name)
        _fake_module(mp, "haiku._src.data_structures", FlatMapping=FlatMapping)
        dill_mod = _fake_module(mp, "dill._dill", _create_array=_create_array)
        _fake_module(mp, "jax._src.array", _reconstruct_array=_reconstruct_array)
        if extra:
            extra.__module__, extra.__qualname__ = "dill._dill", extra.__name__
            setattr(dill_mod, extra.__name__, extra)

        class Writer(pickle.Pickler):
            def reducer_override(self, obj):
                if type(obj) is np.ndarray:
                    f, args, state = obj.__reduce__()
                    if array_style == "dill":
                        return _create_array, (f, args, state, None)
                    return _reconstruct_array, (f, args, state, {"weak_type": False})
                if isinstance(obj, Marker):
                    return extra, ()
                return NotImplemented

        class Marker:
            pass

        nested = FlatMapping({m: FlatMapping(p) for m, p in tree.items()})
        if extra is not None:
            nested["extra"] = Marker()
        with open(path, "wb") as f:
            Writer(f, protocol=4).dump(nested)


@pytest.mark.parametrize("array_style", ["dill", "jax"])
def test_reads_dill_haiku_pickles_without_haiku_jax_or_dill(tmp_path, monkeypatch, array_style):
    assert "haiku" not in sys.modules
    tree = random_tree(dm_nfnet_reference_shapes(num_classes=5, **NFNET_TEST))
    path = tmp_path / "F0_haiku.npz"  # DeepMind's files carry .npz although they are pickles
    _write_like_dill_and_haiku(monkeypatch, path, tree, array_style)
    assert not any(n == "haiku" or n.startswith(("haiku.", "dill", "jax._src.array")) for n in sys.modules)
    loaded = convert.load_haiku_checkpoint(path)
    assert type(loaded) is dict and all(type(v) is dict for v in loaded.values())
    assert shapes_of(loaded) == shapes_of(tree)
    m = convert.from_deepmind_nfnet(dp_zoo.create_model("nfnet_test", num_classes=5), loaded)
    x = images((32, 32, 3))
    close(m(x).numpy(), dm_nfnet_forward(tree, x, NFNET_TEST["depths"], NFNET_TEST["widths"]))


def test_pickle_needing_more_of_dill_asks_for_it(tmp_path, monkeypatch):
    try:
        import dill  # noqa: F401
        pytest.skip("dill is installed")
    except ImportError:
        pass

    def _create_function():
        raise AssertionError

    path = tmp_path / "needs_dill.pkl"
    _write_like_dill_and_haiku(monkeypatch, path, {"m": {"w": np.zeros(2, "float32")}}, extra=_create_function)
    with pytest.raises(ImportError, match=r"pip install dill"):
        convert.load_haiku_checkpoint(path)


def test_pickle_with_other_globals_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, ("echo should-not-run",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"m": {"w": Evil()}}))
    with pytest.raises(ValueError, match=r"refusing to load global (posix|nt|os)\.system"):
        convert.load_haiku_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable Haiku parameter checkpoint"):
        convert.load_haiku_checkpoint(path)
