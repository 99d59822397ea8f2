"""timm (PyTorch) state dicts <-> our NF-ResNets and NFNets.

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

import re

import keras
import numpy as np

from dp_zoo.models.convert._common import listed, to_numpy
from dp_zoo.models.layers import SkipInitGain, SqueezeExcite
from dp_zoo.models.ws_conv import ScaledWSConv2D

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
    sd = {k: to_numpy(v) for k, v in state_dict.items()}
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
        problems.insert(0, f"unexpected {listed(unexpected, 10)}")
    if problems:
        raise ValueError(
            "The timm state dict does not match this model (same variant, number of classes and "
            "conventions? e.g. timm's nf_resnet* have no SkipInit gains: build with "
            "nf_resnet.TIMM_CONVENTIONS['nf_resnet']): "
            + listed(problems, 20, "; ")
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
