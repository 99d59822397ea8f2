"""Architecture registry: ``register_model``, ``create_model``, ``list_architectures``.

Each model family module decorates its builder functions with
``@register_model``; ``create_model`` imports the family modules on first use
so that the registry is complete whatever the user imported.
"""

import difflib
import importlib

_REGISTRY = {}
_FAMILY_MODULES = ("dp_zoo.models.wide_resnet", "dp_zoo.models.nf_resnet", "dp_zoo.models.nfnet")
_loaded = False


def register_model(fn=None, *, name=None):
    """Registers a builder ``fn(num_classes=..., input_shape=..., **kw)``.

    Usable as ``@register_model`` or ``@register_model(name="...")``.
    """

    def wrap(f):
        key = name or f.__name__
        if key in _REGISTRY and _REGISTRY[key] is not f:
            raise ValueError(f"architecture {key!r} is registered twice")
        _REGISTRY[key] = f
        return f

    return wrap(fn) if fn is not None else wrap


def _ensure_loaded():
    global _loaded
    if _loaded:
        return
    for module in _FAMILY_MODULES:
        importlib.import_module(module)
    _loaded = True


def list_architectures(pattern=None):
    """Returns the sorted names of registered architectures.

    Args:
      pattern: optional substring; only names containing it are returned.
    """
    _ensure_loaded()
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if pattern in n]
    return names


def unknown_name_message(kind, name, known):
    """An error message for an unknown ``name`` that lists close matches."""
    close = difflib.get_close_matches(str(name), known, n=5, cutoff=0.5)
    hint = (
        f" Did you mean: {', '.join(close)}?"
        if close
        else f" Known {kind}s: {', '.join(known)}."
    )
    return f"Unknown {kind} {name!r}.{hint}"


def create_model(name, *, num_classes, input_shape=None, **kwargs):
    """Builds a registered architecture as a Keras model.

    Args:
      name: architecture name, e.g. ``"wrn16_4"``, ``"nf_resnet50"``,
        ``"nfnet_f0"``. See ``list_architectures()``.
      num_classes: number of output logits.
      input_shape: ``(H, W, C)``; each family has a default.
      **kwargs: family-specific overrides (e.g. ``scale_norm=True``).

    Returns:
      A ``keras.Model`` producing logits.

    Raises:
      ValueError: unknown name (the message lists close names) or bad args.
    """
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ValueError(
            unknown_name_message("architecture", name, sorted(_REGISTRY))
            + " See dp_zoo.list_architectures()."
        )
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive integer, got {num_classes!r}; "
            "pass e.g. num_classes=10."
        )
    if input_shape is not None:
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or any(
            (not isinstance(d, int)) or d < 1 for d in input_shape
        ):
            raise ValueError(
                f"input_shape must be (height, width, channels) of positive "
                f"integers, got {input_shape!r}; e.g. input_shape=(32, 32, 3)."
            )
    return _REGISTRY[name](num_classes=num_classes, input_shape=input_shape, **kwargs)
