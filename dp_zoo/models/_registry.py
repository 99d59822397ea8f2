"""Architecture registry: ``register_family``, ``create_model``, ``list_architectures``, ``default_recipe``.

A family module describes its variants as frozen config dataclasses and
registers them with ``register_family``, naming the recipe that
``python -m dp_zoo.train --model ARCH`` starts from when no ``--recipe`` is
given (one for the family, others for the variants that differ);
``dp_zoo/models/__init__.py`` imports every family module, so importing any
part of ``dp_zoo.models`` completes the registry. A new family is therefore
its module plus one import there: no table elsewhere names its architectures.

Default recipes are held by name only, so that nothing here imports
``dp_zoo/recipes/``: that package looks names up here (``recipes.get``'s error
message), and an import circle is what tests/test_layering.py forbids;
tests/train/test_recipes.py checks that every name is a recipe.
"""

import dataclasses

_REGISTRY = {}
_DEFAULT_RECIPES = {}  # architecture -> name of its default recipe (architectures without one are absent)


def register_model(fn=None, *, name=None, default_recipe=None):
    """Registers a builder ``fn(num_classes=..., input_shape=..., **kw)``.

    Usable as ``@register_model`` or ``@register_model(name="...")``.

    Args:
      fn: the builder (absent when used as ``@register_model(...)``).
      name: architecture name; default ``fn.__name__``.
      default_recipe: optional name of the recipe ``--model NAME`` starts
        from (``dp_zoo.recipes.recipes.RECIPES``); without one, ``--model NAME``
        needs ``--recipe``.
    """

    def wrap(f):
        key = name or f.__name__
        if key in _REGISTRY and _REGISTRY[key] is not f:
            raise ValueError(f"architecture {key!r} is registered twice")
        _REGISTRY[key] = f
        if default_recipe is not None:
            _DEFAULT_RECIPES[key] = default_recipe
        return f

    return wrap(fn) if fn is not None else wrap


def register_family(variants, build, *, default_shape, default_recipe, variant_recipes=None,
                    default_shapes=None, aliases=None):
    """Registers one architecture per variant of a model family, each with its default recipe.

    ``create_model(variant, num_classes=..., input_shape=..., **overrides)``
    then returns ``build(dataclasses.replace(variants[variant], **overrides),
    num_classes=..., input_shape=..., name=variant)``, and
    ``default_recipe(variant)`` is ``variant_recipes.get(variant, default_recipe)``.

    Args:
      variants: architecture name -> frozen config dataclass instance.
      build: ``build(cfg, *, num_classes, input_shape, name)`` -> keras.Model.
      default_shape: input shape ``(H, W, C)`` of variants not in
        ``default_shapes``.
      default_recipe: name of the recipe ``python -m dp_zoo.train --model
        VARIANT`` starts from (with the model swapped for VARIANT) for
        variants not in ``variant_recipes``.
      variant_recipes: optional variant -> recipe name, for variants whose
        default differs from the family's (their own recipe, or a fast one
        for tiny test variants).
      default_shapes: optional name -> input shape.
      aliases: optional old override name -> config field, for spellings that
        saved configs (a run's ``model_kwargs``) may still hold.

    Raises:
      ValueError: ``variant_recipes`` or ``default_shapes`` names a variant
        the family does not have (a typo would otherwise be ignored).
    """
    variant_recipes = variant_recipes or {}
    default_shapes = default_shapes or {}
    for what, table in (("variant_recipes", variant_recipes), ("default_shapes", default_shapes)):
        stray = sorted(set(table) - set(variants))
        if stray:
            raise ValueError(f"{what} names variants the family does not have: {stray}")
    for variant, cfg in variants.items():
        register_model(_make_builder(variant, cfg, build, default_shapes.get(variant, default_shape),
                                     aliases or {}),
                       default_recipe=variant_recipes.get(variant, default_recipe))


def default_recipe(name):
    """Name of the recipe ``python -m dp_zoo.train --model NAME`` starts from, or None.

    None for an unknown architecture and for one registered without a default.
    """
    return _DEFAULT_RECIPES.get(name)


def default_recipes():
    """A new dict: every architecture that has a default recipe -> that recipe's name."""
    return dict(_DEFAULT_RECIPES)


def _make_builder(variant, base_cfg, build, default_shape, aliases):
    fields = [f.name for f in dataclasses.fields(base_cfg)]
    cfg_name = type(base_cfg).__name__

    def builder(*, num_classes, input_shape=None, **overrides):
        for old, new in aliases.items():
            if old in overrides:
                value = overrides.pop(old)
                if overrides.setdefault(new, value) != value:
                    raise ValueError(f"{variant}: {new!r} and its old spelling {old!r} disagree "
                                     f"({overrides[new]!r} vs {value!r}); pass {new!r} only.")
        unknown = [k for k in overrides if k not in fields]
        if unknown:
            raise ValueError(unknown_name_message(f"{variant} override", unknown[0], fields))
        cfg = dataclasses.replace(base_cfg, **overrides)
        return build(cfg, num_classes=num_classes, input_shape=input_shape or default_shape, name=variant)

    builder.__name__ = variant
    builder.__doc__ = (
        f"Builds {variant} ({base_cfg}).\n\n"
        "Args:\n"
        "  num_classes: number of output logits.\n"
        f"  input_shape: (H, W, C); default {default_shape}.\n"
        f"  **overrides: any {cfg_name} field ({', '.join(fields)}).\n\n"
        "Returns:\n"
        "  A functional keras.Model producing logits.\n"
    )
    return builder


def list_architectures(pattern=None):
    """Returns the sorted names of registered architectures.

    Args:
      pattern: optional substring; only names containing it are returned.
    """
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if pattern in n]
    return names


def unknown_name_message(kind, name, known):
    """An error message for an unknown ``name`` that lists close matches (``cli.unknown_name_message``)."""
    from dp_zoo import cli

    return cli.unknown_name_message(kind, name, known)


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
