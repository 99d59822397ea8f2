"""Weight import: timm (PyTorch) state dicts and Haiku parameter trees into our Keras models.

Haiku (JAX): ``from_deepmind_nfnet(model, params)`` fills ``nfnet_f0..f7``
from DeepMind's NFNet parameters (their public ImageNet weights),
``from_haiku_wrn(model, params)`` fills ``wrn*`` from jax_privacy's
WideResNets (the paper's fine-tuning starting points);
``load_haiku_checkpoint(path)`` reads those files without Haiku, JAX or
(usually) dill; ``to_deepmind_nfnet`` / ``to_haiku_wrn`` are the inverses.
Names and their sources are documented with the code below.

timm:

``from_timm_state_dict(model, state_dict)`` fills a model built by
``dp_zoo.create_model("nf_resnet50" | "nfnet_f0" | ...)`` from the state dict
of the matching timm model (``nf_resnet50``, ``dm_nfnet_f0``, ...): e.g.
DeepMind's ImageNet NFNet weights as timm distributes them. Every tensor must
be used exactly once and have the expected shape; anything else is an error
that names the keys, never a silent partial load.

``to_timm_state_dict(model)`` is the inverse (our weights for PyTorch).

Layouts: conv kernels OIHW -> HWIO, per-channel gains [O,1,1,1] -> [O],
linear [out, in] -> [in, out].
"""

import os
import pickle
import re
from collections.abc import Mapping

import keras
import numpy as np

from dp_zoo.models.layers import ScaledWSConv2D, SkipInitGain, SqueezeExcite

_PARTS = {"down_conv": "downsample.conv", "conv1": "conv1", "conv2": "conv2", "conv2b": "conv2b",
          "conv3": "conv3", "se": "attn_last", "skipinit": "skipinit_gain"}


def timm_name(layer_name):
    """The timm parameter prefix of one of our NF layers."""
    m = re.fullmatch(r"stage(\d+)_block(\d+)_(\w+)", layer_name)
    if m:
        s, b, part = int(m.group(1)) - 1, int(m.group(2)) - 1, m.group(3)
        if part not in _PARTS:
            raise KeyError(layer_name)
        return f"stages.{s}.{b}.{_PARTS[part]}"
    m = re.fullmatch(r"stem_conv(\d*)", layer_name)
    if m:
        return f"stem.conv{m.group(1)}"
    if layer_name == "final_conv":
        return "final_conv"
    if layer_name == "logits":
        return "head.fc"
    raise KeyError(layer_name)


def _np(t):
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _oihw_to_hwio(a):
    return a.transpose(2, 3, 1, 0)


def _hwio_to_oihw(a):
    return a.transpose(3, 2, 0, 1)


def _mapping(model):
    """(timm key, Keras variable, timm shape, to_keras, to_timm) for every weight of ``model``.

    Returns:
      (entries, problems): ``problems`` names the layers that have no timm
      counterpart.
    """
    entries, problems = [], []

    def conv(prefix, kernel):
        kh, kw, cin, cout = kernel.shape
        entries.append((f"{prefix}.weight", kernel, (cout, cin, kh, kw), _oihw_to_hwio, _hwio_to_oihw))

    def vector(key, var, timm_shape):
        entries.append((key, var, timm_shape, lambda a: a.reshape(var.shape), lambda a: a.reshape(timm_shape)))

    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            prefix = timm_name(layer.name)
        except KeyError:
            problems.append(f"no timm name for layer {layer.name!r}")
            continue
        if isinstance(layer, ScaledWSConv2D):
            cout = layer.kernel.shape[3]
            conv(prefix, layer.kernel)
            vector(f"{prefix}.gain", layer.gain, (cout, 1, 1, 1))  # timm keeps gains broadcastable
            if layer.use_bias:
                vector(f"{prefix}.bias", layer.bias, (cout,))
        elif isinstance(layer, SqueezeExcite):
            for fc in (layer.fc1, layer.fc2):
                conv(f"{prefix}.{fc.name}", fc.kernel)
                vector(f"{prefix}.{fc.name}.bias", fc.bias, (fc.kernel.shape[3],))
        elif isinstance(layer, SkipInitGain):
            vector(prefix, layer.gain, ())
        elif layer.name == "logits":
            cin, cout = layer.kernel.shape
            entries.append((f"{prefix}.weight", layer.kernel, (cout, cin), np.transpose, np.transpose))
            vector(f"{prefix}.bias", layer.bias, (cout,))
        else:
            problems.append(f"layer {layer.name!r} ({type(layer).__name__}) has no conversion rule")
    return entries, problems


def from_timm_state_dict(model, state_dict):
    """Copies a timm NF model's parameters into ``model`` in place.

    Args:
      model: our Keras NF-ResNet / NFNet (same variant, same num_classes; for
        timm's exact numerics built with ``nf_resnet.TIMM_CONVENTIONS``).
      state_dict: mapping name -> tensor/array (``torch_model.state_dict()``).

    Returns:
      ``model``, its weights replaced.

    Raises:
      ValueError: missing, unexpected or mis-shaped parameters (named); the
        model is then left unchanged.
    """
    sd = {k: _np(v) for k, v in state_dict.items()}
    entries, problems = _mapping(model)
    used = set()
    assignments = []  # applied only once everything has been checked: no half-loaded model on error
    for key, var, timm_shape, to_keras, _ in entries:
        if key not in sd:
            problems.append(f"missing {key}")
            continue
        used.add(key)
        a = sd[key]
        if tuple(a.shape) != tuple(timm_shape):
            problems.append(f"{key}: shape {tuple(a.shape)}, expected {tuple(timm_shape)}")
            continue
        assignments.append((var, to_keras(a)))
    unexpected = sorted(set(sd) - used)
    if unexpected:
        # First, so that it survives the truncation below.
        problems.insert(0, f"unexpected {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
    if problems:
        raise ValueError(
            "The timm state dict does not match this model (same variant, number of classes and "
            "conventions? e.g. timm's nf_resnet* have no SkipInit gains: build with "
            "nf_resnet.TIMM_CONVENTIONS['nf_resnet']): "
            + "; ".join(problems[:20]) + (" ..." if len(problems) > 20 else "")
        )
    for var, value in assignments:
        var.assign(value.astype(np.float32))
    return model


def to_timm_state_dict(model):
    """The inverse of ``from_timm_state_dict``: our weights under timm's names and layouts.

    E.g. to run a model trained here in PyTorch:
    ``timm_model.load_state_dict({k: torch.from_numpy(v) for k, v in d.items()})``.

    Args:
      model: our Keras NF-ResNet / NFNet.

    Returns:
      dict timm key -> float32 numpy array.

    Raises:
      ValueError: a layer has no timm counterpart (named).
    """
    entries, problems = _mapping(model)
    if problems:
        raise ValueError("This model has no timm equivalent: " + "; ".join(problems[:20]))
    # np.array, not np.ascontiguousarray: that one turns timm's 0-d SkipInit scalars into shape (1,).
    return {key: np.array(to_timm(keras.ops.convert_to_numpy(var)), dtype=np.float32, order="C")
            for key, var, _, _, to_timm in entries}


# --- Haiku parameter trees: DeepMind's NFNets, jax_privacy's WideResNets ----
#
# Haiku names a parameter by its module path and its own name: a nested
# ``{module: {param: array}}`` dict (``hk.Params``), e.g.
# ``params["NFNet/~/nf_block_1/~/conv0"]["w"]``. Haiku's module paths: "/~/" joins
# a module to one its constructor made, "/" to one made in ``__call__``; the
# first unnamed instance of a class is ``snake_case(class)``, the next ones get
# ``_1``, ``_2``, ... (per parent).
#
# Sources of the names (read, not copied; checked against the code, not against
# the released files, which cannot be downloaded here):
#
# DeepMind NFNets: google-deepmind/deepmind-research, nfnets/nfnet.py (NFNet,
#   NFBlock) and nfnets/base.py (WSConv2D: params ``w`` [kh, kw, cin/groups,
#   cout] (HWIO), ``gain`` [cout], ``bias`` [cout]; SqueezeExcite: two
#   ``hk.Linear`` -> ``linear`` and ``linear_1``, ``w`` [in, out], ``b`` [out]).
#   Module tree: ``NFNet/~/stem_conv0..3``; blocks, made in NFNet's constructor
#   in order over all stages: ``NFNet/~/nf_block`` (the first has no suffix),
#   ``NFNet/~/nf_block_1``, ...; in each block ``/~/conv0`` (1x1), ``/~/conv1``
#   (3x3 grouped, strided), ``/~/conv1b`` (3x3 grouped), ``/~/conv2`` (1x1),
#   ``/~/conv_shortcut`` (1x1, where the block changes width or stride),
#   ``/~/squeeze_excite/~/linear`` and ``/~/squeeze_excite/~/linear_1``, and the
#   block's own scalar ``skip_gain``; ``NFNet/~/final_conv``; classifier
#   ``NFNet/~/linear``. The released ImageNet weights
#   (storage.googleapis.com/dm-nfnets/F0_haiku.npz ... F7) are, despite the
#   name, a ``dill`` pickle of that dict (nfnets/nfnet_demo_colab.ipynb loads
#   them with ``dill.load``), whose mappings refer to Haiku's
#   ``haiku._src.data_structures.FlatMapping``: reading them with plain
#   pickle/dill needs Haiku installed (benjs/nfnets_pytorch issue #5), which
#   ``load_haiku_checkpoint`` does not.
#   jax_privacy's own NFNet copy (experiments/image_classification/models/
#   imagenet_nfnets.py) uses the same names.
#
# jax_privacy WideResNets: google-deepmind/jax_privacy,
#   experiments/image_classification/models/cifar.py (WideResNet; identical
#   in the 2022 release jax_privacy/src/training/image_classification/models/
#   cifar.py) and common.py (WSConv2D as above). Every module is made in
#   ``__call__``, so they hang off ``wide_res_net/`` directly:
#   ``First_conv``; per stage s = 1..3 and block i = 0..n-1, conv j = 0..1:
#   ``Block_{s}_norm_{i}_{j}`` (hk.GroupNorm: ``scale``, ``offset`` [C]),
#   ``Block_{s}Conv_{i}_{j}`` (no underscore before "Conv"), on block 0
#   ``Block_{s}_skip_norm`` and ``Block_{s}_skip_conv``; with
#   ``use_skip_init`` the scalar ``Block_{s}Scale_{i}_1`` [1] is a parameter
#   of ``wide_res_net`` itself; ``Final_norm``; classifier ``Softmax``.
#   The paper's checkpoints (WRN_28_10_IMAGENET32 etc.) were published in
#   2022 as ``dill`` pickles ``{"params": ..., "network_state": ...}``
#   (storage.googleapis.com/dm_jax_privacy/models/WRN_28_10_IMAGENET32.dill);
#   jax_privacy strips ``~norm_fn/`` and ``~conv_fn/`` from their module names
#   ("due to a change in the model definition"), and so do we. Later
#   jax_privacy releases store them as Orbax checkpoints (directories), which
#   this module does not read: restore those with Orbax and pass the params.

_DM_NFNET = "NFNet"
_DM_NFNET_PARTS = {"conv1": "conv0", "conv2": "conv1", "conv2b": "conv1b", "conv3": "conv2",
                   "down_conv": "conv_shortcut"}
_HK_WRN = "wide_res_net"
# jax_privacy's own renaming of old checkpoints (models/common.py, 2022 release).
_WRN_LEGACY_SEGMENTS = ("~norm_fn/", "~conv_fn/")


def _hk_leaf(a, where):
    """``a`` as a numpy array (numpy, JAX or torch arrays, Python scalars)."""
    a = _np(a)
    if a.dtype.kind not in "fiuV":  # "V": ml_dtypes' bfloat16
        raise ValueError(f"{where}: not a numeric array (dtype {a.dtype}).")
    return a


def _unwrap_checkpoint(tree):
    """The params of a ``{"params": ..., "network_state": ...}`` checkpoint dict, else ``tree``."""
    if isinstance(tree, Mapping) and isinstance(tree.get("params"), Mapping):
        for key in ("network_state", "state"):
            state = tree.get(key)
            if isinstance(state, Mapping) and any(
                    not isinstance(v, Mapping) or len(v) for v in state.values()):
                raise ValueError(
                    f"The checkpoint has a non-empty {key!r} (e.g. BatchNorm statistics, modules "
                    f"{sorted(state)[:5]}); these models have no state to put it in.")
        return tree["params"]
    return tree


def flatten_haiku_params(params, rename=None):
    """A Haiku parameter tree as ``{(module, param): numpy array}``.

    Args:
      params: ``{module: {param: array}}`` (Haiku's ``hk.Params``), the flat
        ``{"module/param": array}`` form (split at the last "/"), a mix of the
        two, or a checkpoint dict holding either under ``"params"``.
      rename: optional function applied to each module name.

    Raises:
      ValueError: not such a tree, or two entries with the same name.
    """
    params = _unwrap_checkpoint(params)
    if not isinstance(params, Mapping):
        raise ValueError(f"Expected a Haiku parameter dict {{module: {{param: array}}}}, got {type(params).__name__}.")
    flat = {}

    def put(module, name, value):
        module = rename(module) if rename else module
        if (module, name) in flat:
            raise ValueError(f"Parameter {module}/{name} appears twice in the tree.")
        flat[(module, name)] = _hk_leaf(value, f"{module}/{name}")

    for key, value in params.items():
        if isinstance(value, Mapping):
            for name, leaf in value.items():
                if isinstance(leaf, Mapping):
                    raise ValueError(f"{key}/{name}: nested deeper than {{module: {{param: array}}}}.")
                put(str(key), str(name), leaf)
        else:
            module, sep, name = str(key).rpartition("/")
            if not sep:
                raise ValueError(f"Top-level entry {key!r} is an array: flat keys must read 'module/param'.")
            put(module, name, value)
    return flat


def _unflatten(flat):
    out = {}
    for (module, name), a in flat.items():
        out.setdefault(module, {})[name] = a
    return out


def _stage_depths(model):
    depths = {}
    for layer in model.layers:
        m = re.match(r"stage(\d+)_block(\d+)_", layer.name)
        if m:
            s, b = int(m.group(1)), int(m.group(2))
            depths[s] = max(depths.get(s, 0), b)
    return [depths[s] for s in sorted(depths)]


def _dense_entries(entries, module, layer):
    entries.append((module, "w", layer.kernel, tuple(layer.kernel.shape), _same, _same))
    entries.append((module, "b", layer.bias, tuple(layer.bias.shape), _same, _same))


def _same(a):
    return a


def _conv_entries(entries, module, layer):
    """Haiku WSConv2D ``w`` (HWIO, as ours), ``gain``, ``bias``."""
    entries.append((module, "w", layer.kernel, tuple(layer.kernel.shape), _same, _same))
    entries.append((module, "gain", layer.gain, tuple(layer.gain.shape), _same, _same))
    if not layer.use_bias:
        return f"layer {layer.name!r} has no bias; the Haiku WSConv2D always has one"
    entries.append((module, "bias", layer.bias, tuple(layer.bias.shape), _same, _same))
    return None


def deepmind_nfnet_name(layer_name, depths):
    """DeepMind's (Haiku) module name for one of our NFNet layers.

    Args:
      layer_name: e.g. "stage2_block1_conv2b".
      depths: blocks per stage of the model.

    Returns:
      (module, part) where part is None for a layer that is a whole Haiku
      module, or the parameter name ("skip_gain") for a block's SkipInit gain.

    Raises:
      KeyError: no DeepMind NFNet counterpart.
    """
    m = re.fullmatch(r"stage(\d+)_block(\d+)_(\w+)", layer_name)
    if m:
        s, b, part = int(m.group(1)), int(m.group(2)), m.group(3)
        if not 1 <= s <= len(depths) or not 1 <= b <= depths[s - 1]:
            raise KeyError(layer_name)
        index = sum(depths[: s - 1]) + b - 1
        block = f"{_DM_NFNET}/~/nf_block" + (f"_{index}" if index else "")
        if part in _DM_NFNET_PARTS:
            return f"{block}/~/{_DM_NFNET_PARTS[part]}", None
        if part == "se":
            return f"{block}/~/squeeze_excite", None
        if part == "skipinit":
            return block, "skip_gain"
        raise KeyError(layer_name)
    m = re.fullmatch(r"stem_conv([1-4])", layer_name)
    if m:
        return f"{_DM_NFNET}/~/stem_conv{int(m.group(1)) - 1}", None
    if layer_name == "final_conv":
        return f"{_DM_NFNET}/~/final_conv", None
    if layer_name == "logits":
        return f"{_DM_NFNET}/~/linear", None
    raise KeyError(layer_name)


def _deepmind_nfnet_mapping(model):
    """(module, param, variable, haiku shape, to_keras, to_haiku) for every weight, and problems."""
    entries, problems = [], []
    depths = _stage_depths(model)
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            module, part = deepmind_nfnet_name(layer.name, depths)
        except KeyError:
            problems.append(f"no DeepMind NFNet name for layer {layer.name!r}")
            continue
        if isinstance(layer, ScaledWSConv2D):
            p = _conv_entries(entries, module, layer)
            if p:
                problems.append(p)
        elif isinstance(layer, SqueezeExcite):
            for fc, name in ((layer.fc1, "linear"), (layer.fc2, "linear_1")):
                cin, cout = fc.kernel.shape[2], fc.kernel.shape[3]
                # Our 1x1 convolution on the pooled map is Haiku's Linear on the pooled vector.
                entries.append((f"{module}/~/{name}", "w", fc.kernel, (cin, cout),
                                lambda a, s=tuple(fc.kernel.shape): a.reshape(s),
                                lambda a, s=(cin, cout): a.reshape(s)))
                entries.append((f"{module}/~/{name}", "b", fc.bias, (cout,), _same, _same))
        elif isinstance(layer, SkipInitGain):
            entries.append((module, part, layer.gain, (), _same, _same))
        elif layer.name == "logits":
            _dense_entries(entries, module, layer)
        else:
            problems.append(f"layer {layer.name!r} ({type(layer).__name__}) has no conversion rule")
    return entries, problems, f"{_DM_NFNET}/~/linear"


def haiku_wrn_name(layer_name):
    """jax_privacy's (Haiku) WideResNet name for one of our WRN layers.

    Returns:
      (module, param_or_None): param is set for the SkipInit scalars, which
      are parameters of ``wide_res_net`` itself.

    Raises:
      KeyError: no jax_privacy counterpart (e.g. ScaleNorm's extra GroupNorms).
    """
    m = re.fullmatch(r"stage([1-3])_block(\d+)_(\w+)", layer_name)
    if m:
        s, i, part = int(m.group(1)), int(m.group(2)) - 1, m.group(3)
        pm = re.fullmatch(r"(gn|conv)([12])", part)
        if pm:
            j = int(pm.group(2)) - 1
            kind = "_norm_" if pm.group(1) == "gn" else "Conv_"
            return f"{_HK_WRN}/Block_{s}{kind}{i}_{j}", None
        if part in ("skip_gn", "skip_conv") and i == 0:
            return f"{_HK_WRN}/Block_{s}_{'skip_norm' if part == 'skip_gn' else 'skip_conv'}", None
        if part == "skip_init":
            return _HK_WRN, f"Block_{s}Scale_{i}_1"
        raise KeyError(layer_name)
    names = {"stem_conv": "First_conv", "head_gn": "Final_norm", "logits": "Softmax"}
    if layer_name in names:
        return f"{_HK_WRN}/{names[layer_name]}", None
    raise KeyError(layer_name)


def _haiku_wrn_mapping(model):
    from dp_zoo.models.layers import WSConv2D
    from dp_zoo.models.wide_resnet import ScalarGain

    entries, problems = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            module, param = haiku_wrn_name(layer.name)
        except KeyError:
            problems.append(f"no jax_privacy WideResNet name for layer {layer.name!r}")
            continue
        if isinstance(layer, WSConv2D):
            p = _conv_entries(entries, module, layer)
            if p:
                problems.append(p)
        elif isinstance(layer, keras.layers.GroupNormalization):
            if not (layer.scale and layer.center):
                problems.append(f"layer {layer.name!r} lacks scale or offset; hk.GroupNorm has both")
                continue
            entries.append((module, "scale", layer.gamma, tuple(layer.gamma.shape), _same, _same))
            entries.append((module, "offset", layer.beta, tuple(layer.beta.shape), _same, _same))
        elif isinstance(layer, ScalarGain):
            entries.append((module, param, layer.gain, (1,), _same, _same))
        elif layer.name == "logits":
            _dense_entries(entries, module, layer)
        else:
            problems.append(f"layer {layer.name!r} ({type(layer).__name__}) has no conversion rule")
    return entries, problems, f"{_HK_WRN}/Softmax"


def _wrn_rename(module):
    for seg in _WRN_LEGACY_SEGMENTS:
        module = module.replace(seg, "")
    return module


def _load_haiku(model, params, mapping, what, skip_head, rename=None):
    flat = flatten_haiku_params(params, rename)
    entries, problems, head = mapping(model)
    if skip_head:
        entries = [e for e in entries if e[0] != head]
        flat = {k: v for k, v in flat.items() if k[0] != head}
    used, assignments, head_shapes = set(), [], []
    for module, name, var, hk_shape, to_keras, _ in entries:
        key = (module, name)
        if key not in flat:
            problems.append(f"missing {module}/{name}")
            continue
        used.add(key)
        a = flat[key]
        if tuple(a.shape) != tuple(hk_shape):
            problems.append(f"{module}/{name}: shape {tuple(a.shape)}, expected {tuple(hk_shape)}")
            if module == head:
                head_shapes.append(tuple(a.shape))
            continue
        assignments.append((var, to_keras(a)))
    unexpected = sorted(f"{m}/{n}" for m, n in set(flat) - used)
    if unexpected:
        problems.insert(0, f"unexpected {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
    if head_shapes:
        problems.insert(0, f"the checkpoint's classifier {head} has another number of classes "
                           f"(shapes {head_shapes}); to fine-tune to {model.output_shape[-1]} classes "
                           "pass skip_head=True, which keeps this model's freshly initialised head")
    if problems:
        raise ValueError(
            f"The {what} parameters do not match this model (same variant and number of classes?): "
            + "; ".join(problems[:20]) + (" ..." if len(problems) > 20 else ""))
    for var, value in assignments:
        var.assign(np.asarray(value, dtype=np.float32))
    return model


def _export_haiku(model, mapping, what):
    entries, problems, _ = mapping(model)
    if problems:
        raise ValueError(f"This model has no {what} equivalent: " + "; ".join(problems[:20]))
    out = {}
    for module, name, var, _, _, to_hk in entries:
        out.setdefault(module, {})[name] = np.array(
            to_hk(keras.ops.convert_to_numpy(var)), dtype=np.float32, order="C")
    return out


def from_deepmind_nfnet(model, params, *, skip_head=False):
    """Copies DeepMind's Haiku NFNet parameters into our NFNet, in place.

    For DeepMind's public ImageNet NFNets (``F0_haiku.npz`` ... ``F7``):
    ``from_deepmind_nfnet(dp_zoo.create_model("nfnet_f0", num_classes=1000),
    load_haiku_checkpoint("F0_haiku.npz"))``. The names follow
    deepmind-research ``nfnets/nfnet.py`` (see the notes above this function
    in the source); they were checked against that code, not against the
    released files.

    Our NFNet defaults are DeepMind's conventions (TF SAME padding, scaled WS
    with ``rsqrt(max(fan_in * var, 1e-4))``, SkipInit gains, SE gain 2,
    average-pool + 1x1 shortcuts, and GELU as ``jax.nn.gelu``'s default tanh
    approximation, activation ``"gelu_tanh"``).

    Args:
      model: ``dp_zoo.create_model("nfnet_f*")`` (or ``nfnet_test``) of the
        same variant; any input size.
      params: Haiku ``{module: {param: array}}``, the flat
        ``{"module/param": array}`` form, or a ``{"params": ...}`` checkpoint.
      skip_head: leave the classifier (``NFNet/~/linear``) as the model has
        it, and ignore the checkpoint's: for fine-tuning to another class
        count.

    Returns:
      ``model``, its weights replaced.

    Raises:
      ValueError: missing, unexpected or mis-shaped parameters (named), or a
        classifier of another class count without ``skip_head``; the model
        is then left unchanged.
    """
    return _load_haiku(model, params, _deepmind_nfnet_mapping, "DeepMind NFNet", skip_head)


def to_deepmind_nfnet(model):
    """The inverse of ``from_deepmind_nfnet``: ``{module: {param: float32 array}}`` under DeepMind's names."""
    return _export_haiku(model, _deepmind_nfnet_mapping, "DeepMind NFNet")


def from_haiku_wrn(model, params, *, skip_head=False):
    """Copies jax_privacy's Haiku WideResNet parameters into our WRN, in place.

    For the paper's fine-tuning starting points (jax_privacy's
    ``WRN_28_10_IMAGENET32``, ``WRN_40_4_IMAGENET32``, ``WRN_40_4_CIFAR100``):
    ``from_haiku_wrn(dp_zoo.create_model("wrn28_10", num_classes=100),
    load_haiku_checkpoint("WRN_28_10_IMAGENET32.dill"), skip_head=True)``.
    Names follow jax_privacy's ``models/cifar.py`` ``WideResNet`` (module
    ``wide_res_net``; see the notes above in the source), checked against
    that code, not against the released files. Module-name segments
    ``~norm_fn/`` and ``~conv_fn/`` of older checkpoints are dropped, as
    jax_privacy does.

    Args:
      model: ``dp_zoo.create_model("wrn*")`` of the same depth and width
        (GroupNorm groups do not change shapes: match jax_privacy's 16).
        ScaleNorm variants have no jax_privacy counterpart. ``skip_init=True``
        models take the ``Block_{s}Scale_{i}_1`` scalars.
      params: as for ``from_deepmind_nfnet``; a ``{"params": ...,
        "network_state": ...}`` checkpoint is unwrapped (its network state
        must be empty).
      skip_head: leave the classifier (``wide_res_net/Softmax``) alone and
        ignore the checkpoint's (fine-tuning to another class count).

    Returns:
      ``model``, its weights replaced.

    Raises:
      ValueError: as ``from_deepmind_nfnet``.
    """
    return _load_haiku(model, params, _haiku_wrn_mapping, "jax_privacy WideResNet", skip_head,
                       rename=_wrn_rename)


def to_haiku_wrn(model):
    """The inverse of ``from_haiku_wrn``: ``{module: {param: float32 array}}`` under jax_privacy's names."""
    return _export_haiku(model, _haiku_wrn_mapping, "jax_privacy WideResNet")


def load_haiku_into(model, params, family):
    """``from_deepmind_nfnet`` / ``from_haiku_wrn`` for fine-tuning: a classifier of another class count stays fresh.

    Args:
      model: our NFNet (``family="nfnet"``) or WideResNet (``family="wrn"``).
      params: as for ``from_deepmind_nfnet``.
      family: "nfnet" or "wrn".

    Returns:
      The names of the layers left at their initialisation: the classifier
      when the checkpoint's has another number of classes, else none.

    Raises:
      ValueError: an unknown family, or parameters that do not fit (named).
    """
    table = {"nfnet": (_deepmind_nfnet_mapping, "DeepMind NFNet", None),
             "wrn": (_haiku_wrn_mapping, "jax_privacy WideResNet", _wrn_rename)}
    if family not in table:
        raise ValueError(f"Haiku checkpoints load into NFNets ('nfnet') or WideResNets ('wrn'), not {family!r}.")
    mapping, what, rename = table[family]
    flat = flatten_haiku_params(params, rename)
    entries, _, head = mapping(model)
    other_classes = any(
        (m, n) in flat and tuple(flat[(m, n)].shape) != tuple(shape)
        for m, n, _, shape, *_ in entries if m == head)
    _load_haiku(model, params, mapping, what, other_classes, rename)
    return [model.layers[-1].name] if other_classes else []


# --- Reading the checkpoint files -------------------------------------------

def _plain_mapping(*args, **kwargs):
    """Stands in for Haiku's FlatMapping / FlatMap / frozendict when unpickling."""
    return dict(*args, **kwargs)


def _dill_create_array(f, args, state, npdict=None):
    """What ``dill._dill._create_array`` does (how dill pickles numpy arrays)."""
    a = f(*args)
    a.__setstate__(state)
    if npdict:
        a.__dict__.update(npdict)
    return a


def _dill_create_dtypemeta(scalar_type):
    return np.dtype if scalar_type is None else type(np.dtype(scalar_type))


def _jax_reconstruct_array(fun, args, arr_state, aval_state=None):
    """``jax``'s array unpickling, stopping at the numpy array (no device_put)."""
    a = fun(*args)
    a.__setstate__(arr_state)
    return a


_NUMPY_GLOBALS = {"ndarray", "dtype", "_reconstruct", "scalar", "_frombuffer"}
_BUILTINS = {"dict": dict, "list": list, "tuple": tuple, "int": int, "float": float, "bool": bool,
             "str": str, "bytes": bytes, "bytearray": bytearray, "complex": complex,
             "set": set, "frozenset": frozenset, "slice": slice}


class _NeedsDill(Exception):
    pass


def _numpy_global(module, name):
    import importlib

    candidates = [module]
    if module.startswith("numpy.core"):
        candidates.insert(0, "numpy._core" + module[len("numpy.core"):])  # numpy 2 moved it
    for mod in candidates:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {module}.{name}")


class _ParamsUnpickler(pickle.Unpickler):
    """Unpickles parameter trees of numpy arrays only: no Haiku, JAX or dill needed.

    Any global outside numpy's array reconstruction, plain containers,
    Haiku's mapping types, dill's array helper and JAX's array reconstruction
    is refused, so such a file cannot run other code while it is read.
    """

    def find_class(self, module, name):
        if module.split(".")[0] == "numpy":
            if name in _NUMPY_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
                return _numpy_global(module, name)
        elif module in ("builtins", "__builtin__") and name in _BUILTINS:
            return _BUILTINS[name]
        elif (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        elif (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        elif module.split(".")[0] == "haiku" and name in ("FlatMapping", "FlatMap", "frozendict"):
            return _plain_mapping
        elif module.split(".")[0] == "jax" and name == "_reconstruct_array":
            return _jax_reconstruct_array
        elif module.split(".")[0] == "dill":
            if name == "_create_array":
                return _dill_create_array
            if name == "_create_dtypemeta":
                return _dill_create_dtypemeta
            raise _NeedsDill(f"{module}.{name}")
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: a Haiku parameter checkpoint should hold "
            "only dicts of numpy/JAX arrays")


def load_haiku_checkpoint(path):
    """Reads a Haiku parameter checkpoint without Haiku or JAX.

    Formats:
      - pickles, as written by ``pickle``/``dill`` (DeepMind's
        ``F*_haiku.npz`` NFNet weights, which are dill pickles despite the
        suffix; jax_privacy's 2022 ``WRN_*.dill`` checkpoints). Haiku's
        FlatMapping/FlatMap become dicts, numpy/JAX arrays become numpy
        arrays, and dill's numpy array helper is emulated, so dill is not
        needed for such files; only a file that uses other dill features asks
        for it (``pip install dill``). Globals outside this set are refused.
      - ``np.savez`` archives whose keys are ``"module/param"`` (what
        ``save_haiku_checkpoint`` writes).

    Args:
      path: the file.

    Returns:
      The stored object with Haiku mappings as plain dicts, e.g. ``{module:
      {param: array}}`` or a checkpoint ``{"params": ..., "network_state":
      ...}``; both are accepted by ``from_deepmind_nfnet`` and
      ``from_haiku_wrn``.

    Raises:
      ImportError: the pickle needs dill features beyond arrays and dill is
        not installed.
      ValueError: not a readable checkpoint (the reason is named).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK"):  # a zip: np.savez
        with np.load(path, allow_pickle=False) as z:
            bad = [k for k in z.files if "/" not in k]
            if bad:
                raise ValueError(f"{path}: npz keys must read 'module/param' (Haiku names); found {bad[:5]}.")
            return _unflatten({tuple(k.rsplit("/", 1)): z[k] for k in z.files})
    if magic.startswith(b"\x93NUMPY"):
        raise ValueError(f"{path}: a single .npy array, not a parameter tree; save the tree with "
                         "save_haiku_checkpoint (npz with 'module/param' keys) or as a pickle.")
    try:
        with open(path, "rb") as f:
            return _ParamsUnpickler(f).load()
    except _NeedsDill as e:
        try:
            import dill  # noqa: F401
        except ImportError:
            raise ImportError(
                f"{path} is a dill pickle that uses dill's {e} beyond plain arrays; install dill "
                "(pip install dill) to read it.") from None
        with open(path, "rb") as f:
            return _DillParamsUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a readable Haiku parameter checkpoint ({e}).") from None


class _DillParamsUnpickler(_ParamsUnpickler):
    """As ``_ParamsUnpickler``, resolving dill's own helpers from an installed dill."""

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except _NeedsDill:
            import importlib

            return getattr(importlib.import_module(module), name)


def save_haiku_checkpoint(params, path):
    """Writes a Haiku parameter tree as an ``np.savez`` archive with ``"module/param"`` keys.

    No pickle: ``load_haiku_checkpoint`` (or ``np.load``) reads it back.

    Args:
      params: as accepted by ``from_deepmind_nfnet`` (e.g. the output of
        ``to_deepmind_nfnet`` / ``to_haiku_wrn``).
      path: destination; numpy appends ``.npz`` if missing.
    """
    flat = flatten_haiku_params(params)
    np.savez(path, **{f"{m}/{n}": a for (m, n), a in flat.items()})
