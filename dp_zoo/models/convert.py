"""Weight import: timm (PyTorch) NF-ResNet / NFNet state dicts into our Keras models.

``from_timm_state_dict(model, state_dict)`` fills a model built by
``dp_zoo.create_model("nf_resnet50" | "nfnet_f0" | ...)`` from the state dict
of the matching timm model (``nf_resnet50``, ``dm_nfnet_f0``, ...): e.g.
DeepMind's ImageNet NFNet weights as timm distributes them. Every tensor must
be used exactly once and have the expected shape; anything else is an error
that names the keys, never a silent partial load.

Layouts: conv kernels OIHW -> HWIO, per-channel gains [O,1,1,1] -> [O],
linear [out, in] -> [in, out].
"""

import re

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


def from_timm_state_dict(model, state_dict):
    """Copies a timm NF model's parameters into ``model`` in place.

    Args:
      model: our Keras NF-ResNet / NFNet (same variant, same num_classes).
      state_dict: mapping name -> tensor/array (``torch_model.state_dict()``).

    Raises:
      ValueError: missing, unexpected or mis-shaped parameters (named).
    """
    sd = {k: _np(v) for k, v in state_dict.items()}
    used = set()
    problems = []

    def take(key, shape=None):
        if key not in sd:
            problems.append(f"missing {key}")
            return None
        used.add(key)
        a = sd[key]
        if shape is not None and tuple(a.shape) != tuple(shape):
            problems.append(f"{key}: shape {tuple(a.shape)}, expected {tuple(shape)}")
            return None
        return a

    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            prefix = timm_name(layer.name)
        except KeyError:
            problems.append(f"no timm name for layer {layer.name!r}")
            continue
        if isinstance(layer, ScaledWSConv2D):
            k = layer.kernel
            w = take(f"{prefix}.weight", (k.shape[3], k.shape[2], k.shape[0], k.shape[1]))
            g = take(f"{prefix}.gain", (k.shape[3], 1, 1, 1))
            vals = [None if w is None else w.transpose(2, 3, 1, 0), None if g is None else g.reshape(-1)]
            if layer.use_bias:
                vals.append(take(f"{prefix}.bias", (k.shape[3],)))
            targets = [layer.kernel, layer.gain] + ([layer.bias] if layer.use_bias else [])
        elif isinstance(layer, SqueezeExcite):
            vals, targets = [], []
            for fc in (layer.fc1, layer.fc2):
                kk = fc.kernel
                w = take(f"{prefix}.{fc.name}.weight", (kk.shape[3], kk.shape[2], 1, 1))
                vals += [None if w is None else w.transpose(2, 3, 1, 0), take(f"{prefix}.{fc.name}.bias", (kk.shape[3],))]
                targets += [fc.kernel, fc.bias]
        elif isinstance(layer, SkipInitGain):
            vals, targets = [take(prefix, ())], [layer.gain]
        elif layer.name == "logits":
            kk = layer.kernel
            w = take(f"{prefix}.weight", (kk.shape[1], kk.shape[0]))
            vals = [None if w is None else w.T, take(f"{prefix}.bias", (kk.shape[1],))]
            targets = [layer.kernel, layer.bias]
        else:
            problems.append(f"layer {layer.name!r} ({type(layer).__name__}) has no conversion rule")
            continue
        for t, v in zip(targets, vals):
            if v is not None:
                t.assign(v.astype(np.float32))
    unexpected = sorted(set(sd) - used)
    if unexpected:
        # First, so that it survives the truncation below.
        problems.insert(0, f"unexpected {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
    if problems:
        raise ValueError(
            "The timm state dict does not match this model (is it the same variant and number "
            "of classes?): " + "; ".join(problems[:20]) + (" ..." if len(problems) > 20 else "")
        )
    return model
