"""Haiku names of our NFNet and WideResNet weights: DeepMind's NFNets, jax_privacy's WideResNets.

Haiku names a parameter by its module path and its own name: a nested
``{module: {param: array}}`` dict (``hk.Params``), e.g.
``params["NFNet/~/nf_block_1/~/conv0"]["w"]``. Haiku's module paths: "/~/" joins
a module to one its constructor made, "/" to one made in ``__call__``; the
first unnamed instance of a class is ``snake_case(class)``, the next ones get
``_1``, ``_2``, ... (per parent).

Sources of the names (read, not copied; checked against the code, not against
the released files, which cannot be downloaded here):

DeepMind NFNets: google-deepmind/deepmind-research, nfnets/nfnet.py (NFNet,
  NFBlock) and nfnets/base.py (WSConv2D: params ``w`` [kh, kw, cin/groups,
  cout] (HWIO), ``gain`` [cout], ``bias`` [cout]; SqueezeExcite: two
  ``hk.Linear`` -> ``linear`` and ``linear_1``, ``w`` [in, out], ``b`` [out]).
  Module tree: ``NFNet/~/stem_conv0..3``; blocks, made in NFNet's constructor
  in order over all stages: ``NFNet/~/nf_block`` (the first has no suffix),
  ``NFNet/~/nf_block_1``, ...; in each block ``/~/conv0`` (1x1), ``/~/conv1``
  (3x3 grouped, strided), ``/~/conv1b`` (3x3 grouped), ``/~/conv2`` (1x1),
  ``/~/conv_shortcut`` (1x1, where the block changes width or stride),
  ``/~/squeeze_excite/~/linear`` and ``/~/squeeze_excite/~/linear_1``, and the
  block's own scalar ``skip_gain``; ``NFNet/~/final_conv``; classifier
  ``NFNet/~/linear``. The released ImageNet weights
  (storage.googleapis.com/dm-nfnets/F0_haiku.npz ... F7) are, despite the
  name, a ``dill`` pickle of that dict (nfnets/nfnet_demo_colab.ipynb loads
  them with ``dill.load``), whose mappings refer to Haiku's
  ``haiku._src.data_structures.FlatMapping``: reading them with plain
  pickle/dill needs Haiku installed (benjs/nfnets_pytorch issue #5), which
  ``load_haiku_checkpoint`` does not.
  jax_privacy's own NFNet copy (experiments/image_classification/models/
  imagenet_nfnets.py) uses the same names.

jax_privacy WideResNets: google-deepmind/jax_privacy,
  experiments/image_classification/models/cifar.py (WideResNet; identical
  in the 2022 release jax_privacy/src/training/image_classification/models/
  cifar.py) and common.py (WSConv2D as above). Every module is made in
  ``__call__``, so they hang off ``wide_res_net/`` directly:
  ``First_conv``; per stage s = 1..3 and block i = 0..n-1, conv j = 0..1:
  ``Block_{s}_norm_{i}_{j}`` (hk.GroupNorm: ``scale``, ``offset`` [C]),
  ``Block_{s}Conv_{i}_{j}`` (no underscore before "Conv"), on block 0
  ``Block_{s}_skip_norm`` and ``Block_{s}_skip_conv``; with
  ``use_skip_init`` the scalar ``Block_{s}Scale_{i}_1`` [1] is a parameter
  of ``wide_res_net`` itself; ``Final_norm``; classifier ``Softmax``.
  The paper's checkpoints (WRN_28_10_IMAGENET32 etc.) were published in
  2022 as ``dill`` pickles ``{"params": ..., "network_state": ...}``
  (storage.googleapis.com/dm_jax_privacy/models/WRN_28_10_IMAGENET32.dill);
  jax_privacy strips ``~norm_fn/`` and ``~conv_fn/`` from their module names
  ("due to a change in the model definition"), and so do we. Later
  jax_privacy releases store them as Orbax checkpoints (directories), which
  this module does not read: restore those with Orbax and pass the params.

Each ``*_mapping(model)`` lists ``(module, param, variable, haiku shape, to_keras,
to_haiku)`` for every weight of ``model``, the problems (layers without a
counterpart), and the classifier's module name; ``haiku.py`` loads and exports
through them.
"""

import re

import keras

from dp_zoo.models.convert._common import identity
from dp_zoo.models.layers import SkipInitGain, SqueezeExcite
from dp_zoo.models.ws_conv import ScaledWSConv2D, WSConv2D

_DM_NFNET = "NFNet"
_DM_NFNET_PARTS = {"conv1": "conv0", "conv2": "conv1", "conv2b": "conv1b", "conv3": "conv2",
                   "down_conv": "conv_shortcut"}
_HK_WRN = "wide_res_net"
# jax_privacy's own renaming of old checkpoints (models/common.py, 2022 release).
_WRN_LEGACY_SEGMENTS = ("~norm_fn/", "~conv_fn/")


def _stage_depths(model):
    """Blocks per stage of one of our models, from its layer names (``stage{s}_block{b}_...``)."""
    depths = {}
    for layer in model.layers:
        m = re.match(r"stage(\d+)_block(\d+)_", layer.name)
        if m:
            s, b = int(m.group(1)), int(m.group(2))
            depths[s] = max(depths.get(s, 0), b)
    return [depths[s] for s in sorted(depths)]


def _dense_entries(entries, module, layer):
    """hk.Linear ``w`` [in, out] and ``b`` [out]: a Dense layer's own layout."""
    entries.append((module, "w", layer.kernel, tuple(layer.kernel.shape), identity, identity))
    entries.append((module, "b", layer.bias, tuple(layer.bias.shape), identity, identity))


def _conv_entries(entries, module, layer):
    """Haiku WSConv2D ``w`` (HWIO, as ours), ``gain``, ``bias``."""
    entries.append((module, "w", layer.kernel, tuple(layer.kernel.shape), identity, identity))
    entries.append((module, "gain", layer.gain, tuple(layer.gain.shape), identity, identity))
    if not layer.use_bias:
        return f"layer {layer.name!r} has no bias; the Haiku WSConv2D always has one"
    entries.append((module, "bias", layer.bias, tuple(layer.bias.shape), identity, identity))
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


def deepmind_nfnet_mapping(model):
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
                entries.append((f"{module}/~/{name}", "b", fc.bias, (cout,), identity, identity))
        elif isinstance(layer, SkipInitGain):
            entries.append((module, part, layer.gain, (), identity, identity))
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


def haiku_wrn_mapping(model):
    """(module, param, variable, haiku shape, to_keras, to_haiku) for every weight, and problems."""
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
            entries.append((module, "scale", layer.gamma, tuple(layer.gamma.shape), identity, identity))
            entries.append((module, "offset", layer.beta, tuple(layer.beta.shape), identity, identity))
        elif isinstance(layer, SkipInitGain):
            entries.append((module, param, layer.gain, (1,), identity, identity))
        elif layer.name == "logits":
            _dense_entries(entries, module, layer)
        else:
            problems.append(f"layer {layer.name!r} ({type(layer).__name__}) has no conversion rule")
    return entries, problems, f"{_HK_WRN}/Softmax"


def wrn_legacy_rename(module):
    """``module`` without the segments that jax_privacy drops from its 2022 checkpoints' names."""
    for seg in _WRN_LEGACY_SEGMENTS:
        module = module.replace(seg, "")
    return module

