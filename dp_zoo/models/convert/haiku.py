"""Haiku parameter trees <-> our models: DeepMind's NFNets and jax_privacy's WideResNets.

``from_deepmind_nfnet(model, params)`` fills ``nfnet_f0..f7`` from DeepMind's
NFNet parameters (their public ImageNet weights), ``from_haiku_wrn(model,
params)`` fills ``wrn*`` from jax_privacy's WideResNets (the paper's
fine-tuning starting points); ``to_deepmind_nfnet`` / ``to_haiku_wrn`` are the
inverses. The names and their sources are in ``haiku_names.py``; reading the
checkpoint files is ``haiku_files.py``.

Haiku names a parameter by its module path and its own name: a nested
``{module: {param: array}}`` dict (``hk.Params``).
"""

from collections.abc import Mapping

import keras
import numpy as np

from dp_zoo.models.convert._common import listed, to_numpy
from dp_zoo.models.convert.haiku_names import deepmind_nfnet_mapping, haiku_wrn_mapping, wrn_legacy_rename


def _hk_leaf(a, where):
    """``a`` as a numpy array (numpy, JAX or torch arrays, Python scalars)."""
    a = to_numpy(a)
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


def unflatten_haiku_params(flat):
    """The inverse of ``flatten_haiku_params``: ``{module: {param: array}}``."""
    out = {}
    for (module, name), a in flat.items():
        out.setdefault(module, {})[name] = a
    return out


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
        problems.insert(0, f"unexpected {listed(unexpected, 10)}")
    if head_shapes:
        problems.insert(0, f"the checkpoint's classifier {head} has another number of classes "
                           f"(shapes {head_shapes}); to fine-tune to {model.output_shape[-1]} classes "
                           "pass skip_head=True, which keeps this model's freshly initialised head")
    if problems:
        raise ValueError(
            f"The {what} parameters do not match this model (same variant and number of classes?): "
            + listed(problems, 20, "; "))
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
    deepmind-research ``nfnets/nfnet.py`` (see ``haiku_names.py``); they were
    checked against that code, not against the released files.

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
    return _load_haiku(model, params, deepmind_nfnet_mapping, "DeepMind NFNet", skip_head)


def to_deepmind_nfnet(model):
    """The inverse of ``from_deepmind_nfnet``: ``{module: {param: float32 array}}`` under DeepMind's names."""
    return _export_haiku(model, deepmind_nfnet_mapping, "DeepMind NFNet")


def from_haiku_wrn(model, params, *, skip_head=False):
    """Copies jax_privacy's Haiku WideResNet parameters into our WRN, in place.

    For the paper's fine-tuning starting points (jax_privacy's
    ``WRN_28_10_IMAGENET32``, ``WRN_40_4_IMAGENET32``, ``WRN_40_4_CIFAR100``):
    ``from_haiku_wrn(dp_zoo.create_model("wrn28_10", num_classes=100),
    load_haiku_checkpoint("WRN_28_10_IMAGENET32.dill"), skip_head=True)``.
    Names follow jax_privacy's ``models/cifar.py`` ``WideResNet`` (module
    ``wide_res_net``; see ``haiku_names.py``), checked against that code,
    not against the released files. Module-name segments
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
    return _load_haiku(model, params, haiku_wrn_mapping, "jax_privacy WideResNet", skip_head,
                       rename=wrn_legacy_rename)


def to_haiku_wrn(model):
    """The inverse of ``from_haiku_wrn``: ``{module: {param: float32 array}}`` under jax_privacy's names."""
    return _export_haiku(model, haiku_wrn_mapping, "jax_privacy WideResNet")


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
    table = {"nfnet": (deepmind_nfnet_mapping, "DeepMind NFNet", None),
             "wrn": (haiku_wrn_mapping, "jax_privacy WideResNet", wrn_legacy_rename)}
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
