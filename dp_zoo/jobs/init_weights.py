"""The weights a run starts from (``--init``): which format, whether it fits the run, loading them.

``--init`` takes a ``.keras`` model of the same architecture, a zoo model
name, an exported artifact directory (verified as ``dp_zoo.load`` verifies
it; its card gives the provenance, as a zoo model's does), a DeepMind
NFNet / jax_privacy WRN Haiku checkpoint, or a timm state dict of an NF
model (``.pth/.pt/.bin/.safetensors``, or ``.npz`` of numpy arrays). A
classifier of another class count is re-initialised; every other layer must
match.

What an initial checkpoint means for the run's privacy is in
``init_privacy.py``.
"""

import os
import sys

TIMM_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".npz")
HAIKU_SUFFIXES = (".dill", ".pkl", ".pickle")


def init_format(path):
    """"keras", "zoo", "artifact", "timm", "haiku" or None (unknown) for an ``--init`` value.

    A zoo entry's name wins over a same-named directory in the working
    directory (as in ``dp_zoo.load``); any other directory is an artifact.

    ``.npz`` is read to tell timm from Haiku: DeepMind's ``F*_haiku.npz``
    NFNet weights are pickles despite the suffix, and ``np.savez`` archives
    of Haiku trees have ``module/param`` keys, where timm's have dots.
    """
    if not os.path.exists(path) or (os.path.isdir(path) and os.sep not in path and zoo_architecture(path)):
        return "zoo" if zoo_architecture(path) is not None else None
    if os.path.isdir(path):
        return "artifact"
    if path.endswith(".keras"):
        return "keras"
    if path.endswith(HAIKU_SUFFIXES):
        return "haiku"
    if path.endswith(".npz"):
        import zipfile

        if not zipfile.is_zipfile(path):
            return "haiku"
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        return "haiku" if any("/" in n[:-4] for n in names if n.endswith(".npy")) else "timm"
    if path.endswith(TIMM_SUFFIXES):
        return "timm"
    return None


def zoo_architecture(name):
    """The architecture of zoo entry ``name``, or None if there is no such entry."""
    from dp_zoo.publish import zoo

    entry = zoo.entries().get(name)
    return entry["architecture"] if entry else None


def _haiku_family(model):
    if model.startswith("nfnet"):
        return "nfnet"
    if model.startswith("wrn") and "scalenorm" not in model:
        return "wrn"
    return None


def _nf_family(model):
    if model.startswith("nfnet"):
        return "nfnet"
    if model.startswith("nf_resnet"):
        return "nf_resnet"
    return None


def init_changes(init, config):
    """The ``TrainConfig`` changes that starting ``config``'s run from ``--init init`` makes.

    ``init_checkpoint`` (an absolute path, or ``zoo:<name>``), and for timm
    weights the layer conventions they were trained with (``model_kwargs``).
    A zoo model is located and verified here, before any data is loaded.

    Raises:
      ValueError: an unknown or missing file, weights of another
        architecture, or a format dp_zoo does not convert for this model
        (one sentence naming the fix).
    """
    fmt = init_format(init)
    if fmt is None:
        if not os.path.exists(init):
            raise ValueError(f"--init {init}: no such file, and no published zoo model of that name "
                             "(python -m dp_zoo.zoo lists them).")
        raise ValueError(
            f"--init {init}: unknown weight format; pass a .keras model, a zoo model name, an artifact "
            "directory, a timm "
            f"state dict ({', '.join(TIMM_SUFFIXES)}) or a Haiku checkpoint "
            f"({', '.join(HAIKU_SUFFIXES + ('.npz',))})."
        )
    changes = {"init_checkpoint": f"zoo:{init}" if fmt == "zoo" else os.path.abspath(init)}
    if fmt == "artifact":
        _check_artifact(init, config)
    if fmt == "zoo":
        arch = zoo_architecture(init)
        if arch != config.model:
            raise ValueError(f"--init {init} is a {arch} model; this run trains {config.model}. "
                             f"Pass --model {arch}, or weights of {config.model}.")
        from dp_zoo.publish import zoo

        try:
            zoo.locate(init)
        except Exception as e:
            raise ValueError(f"--init {init}: {e}") from None
    if fmt == "haiku" and _haiku_family(config.model) is None:
        raise ValueError(
            f"--init {init} is a Haiku checkpoint, which dp_zoo converts into NFNets (DeepMind's) and "
            f"WideResNets (jax_privacy's), not {config.model!r}; pass a .keras model instead."
        )
    if fmt == "timm":
        family = _nf_family(config.model)
        if family is None:
            raise ValueError(
                f"--init {init} is a timm state dict, which dp_zoo converts only for the "
                f"NF-ResNet/NFNet families, not {config.model!r}; pass a .keras model instead."
            )
        from dp_zoo.models.nf_resnet import TIMM_CONVENTIONS

        # timm's weights are only right under timm's layer conventions
        # (padding, gains, epsilon); the config records them.
        kw = dict(config.model_kwargs)
        kw.update(TIMM_CONVENTIONS[family])
        changes["model_kwargs"] = tuple(sorted(kw.items()))
    return changes


def _check_artifact(path, config):
    """An artifact directory must verify (files, card, the accountant's epsilon) and hold ``config.model``."""
    from dp_zoo.publish import zoo

    try:
        card = zoo.card(os.path.abspath(path))
    except (ValueError, OSError) as e:
        raise ValueError(f"--init {path}: {e}") from None
    arch = (card.get("model") or {}).get("architecture")
    if arch != config.model:
        raise ValueError(f"--init {path} is a {arch} model; this run trains {config.model}. "
                         f"Pass --model {arch}, or weights of {config.model}.")


# Runs in its own process: importing torch after TensorFlow can crash the
# process (CUDA builds), and the training process needs no torch at all.
_TORCH_TO_NPZ = """
import sys, numpy as np, torch
sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
for key in ("state_dict_ema", "state_dict", "model"):
    if isinstance(sd, dict) and isinstance(sd.get(key), dict):
        sd = sd[key]
        break
np.savez(sys.argv[2], **{k: v.detach().float().numpy() for k, v in sd.items() if hasattr(v, "detach")})
"""


def read_timm_state_dict(path):
    """A timm checkpoint as ``{name: float32 numpy array}``.

    .npz and .safetensors are read here (no PyTorch needed); .pth/.pt/.bin
    are read by PyTorch (``weights_only=True``: tensors only, no pickled
    code) in a subprocess.
    """
    import numpy as np

    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k].astype(np.float32) for k in z.files}
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return {k: v.astype(np.float32) for k, v in load_file(path).items()}
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sd.npz")
        r = subprocess.run([sys.executable, "-c", _TORCH_TO_NPZ, path, out], capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            raise ValueError(f"--init {path}: PyTorch could not read it as a state dict ({last}). "
                             "Install torch, or convert it to .npz/.safetensors.")
        return read_timm_state_dict(out)


def load_init_weights(path, model, config, input_shape):
    """Fills ``model`` from ``--init`` (.keras, zoo name, Haiku or timm); returns the re-initialised layer names."""
    import keras

    import dp_zoo.models  # the registry's create_model (dp_zoo.create_model adds the zoo's weights)

    fmt = "zoo" if path.startswith("zoo:") else init_format(path)
    if fmt == "keras":
        import dp_zoo.models  # noqa: F401  custom layers for loading

        return transfer_weights(keras.models.load_model(path), model)
    if fmt == "zoo":
        # Verified against the zoo table's checksum before it is used.
        return transfer_weights(dp_zoo.load(path[len("zoo:"):], include_preprocessing=False), model)
    if fmt == "artifact":
        # Verified as any load is; the bare network (normalised input), as the zoo name gives it.
        return transfer_weights(dp_zoo.load(os.path.abspath(path), include_preprocessing=False), model)
    if fmt == "haiku":
        from dp_zoo.models.convert import load_haiku_checkpoint, load_haiku_into

        return load_haiku_into(model, load_haiku_checkpoint(path), _haiku_family(config.model))
    from dp_zoo.models.convert import from_timm_state_dict

    sd = read_timm_state_dict(path)
    head = sd.get("head.fc.weight")
    if head is not None and head.shape[0] != model.output_shape[-1]:
        # Another class count (e.g. ImageNet-1k weights, CIFAR-10 run):
        # convert into a model with the checkpoint's head, then copy all
        # but the classifier.
        source = dp_zoo.models.create_model(config.model, num_classes=int(head.shape[0]), input_shape=input_shape,
                                     **dict(config.model_kwargs))
        from_timm_state_dict(source, sd)
        return transfer_weights(source, model)
    from_timm_state_dict(model, sd)
    return []


def transfer_weights(source, target):
    """Copies ``source``'s weights into ``target`` layer by layer (matched by name).

    Layers whose weight shapes differ keep their fresh initialisation, which
    is what fine-tuning to another number of classes needs; only the
    classifier may differ, any other mismatch is an error.

    Returns:
      names of the layers left at their initialisation.
    """
    src = {layer.name: layer for layer in source.layers}
    fresh = []
    for layer in target.layers:
        if not layer.weights:
            continue
        other = src.get(layer.name)
        if other is None:
            raise ValueError(
                f"--init model has no layer {layer.name!r}: it is not a {target.name} checkpoint. "
                "Pass weights of the same architecture."
            )
        shapes = [tuple(w.shape) for w in other.get_weights()]
        if shapes == [tuple(w.shape) for w in layer.get_weights()]:
            layer.set_weights(other.get_weights())
        elif layer is target.layers[-1]:
            fresh.append(layer.name)
        else:
            raise ValueError(
                f"--init layer {layer.name!r} has weight shapes {shapes}, the model needs "
                f"{[tuple(w.shape) for w in layer.get_weights()]}: not the same architecture."
            )
    return fresh
