"""Which variables a run trains: all of them, the classifier only, or those a pattern names.

``TrainConfig.trainable`` (``--trainable``) is ``"all"`` (the default),
``"head"`` (the classifier: the Dense layer that produces the model's
logits) or a regular expression searched in each variable's path (Keras'
``variable.path``, e.g. ``"stage4_block1_conv0/kernel"`` or
``"logits/bias"``): ``"stage4|logits"`` trains the last stage and the
classifier.

``apply`` freezes every other variable (``variable.trainable = False``, and
``layer.trainable = False`` for a layer left with nothing to train), so that
everything downstream, per-example gradients, clipping norms, noise, the
optimizer, weight decay and EMA, sees the trained variables only
(docs/design.md, "Fine-tuning modes"). The clipping norm C then bounds the
norm of each example's gradient over the trained variables: that is the
sensitivity of what is released, because the frozen ones never change.

A BatchNormalization layer that still trains normalises with statistics of
the batch (and in DP-SGD's per-example computation, of one example's views)
and updates moving statistics that no clipping covers; it is refused.
Frozen (``layer.trainable = False``), Keras runs it in inference mode with
its fixed statistics, a per-example function like any other.
"""

import math
import re

import keras

ALL = "all"
HEAD = "head"


class TrainableError(ValueError):
    """A ``trainable`` setting that cannot apply to the model (the message names the fix)."""


def classifier_layer(model):
    """The Dense layer whose output is ``model``'s output (the classifier).

    Raises:
      TrainableError: the model's output does not come from one Dense layer.
    """
    outputs = getattr(model, "outputs", None)
    layers = getattr(model, "layers", None) or []
    if outputs and len(outputs) == 1 and layers:
        last = outputs[0]._keras_history[0] if hasattr(outputs[0], "_keras_history") else None
        if isinstance(last, keras.layers.Dense):
            return last
    if layers and isinstance(layers[-1], keras.layers.Dense) and not outputs:
        return layers[-1]  # a Sequential model not yet called symbolically
    raise TrainableError(
        f"cannot identify the classifier of model {model.name!r}: its output does not come from one Dense "
        "layer. Name the variables to train with a pattern instead (--trainable REGEX).")


def _pattern(spec):
    try:
        return re.compile(spec)
    except re.error as e:
        raise TrainableError(f"--trainable {spec!r} is not a valid regular expression ({e}); "
                             "use 'all', 'head' or a Python regex such as 'stage4|logits'.") from None


def select(model, spec):
    """``(variables to train, patterns)`` of ``model`` for the ``trainable`` setting ``spec``.

    Candidates are the model's trainable variables (BatchNorm's moving
    statistics never are). Raises ``TrainableError`` for an invalid regex, one
    that matches nothing, or ``"head"`` on a model without an identifiable
    classifier.
    """
    spec = ALL if spec is None else str(spec)
    candidates = list(model.trainable_variables)
    if spec == ALL:
        return candidates, [ALL]
    if spec == HEAD:
        head = classifier_layer(model)
        ids = {id(v) for v in head.trainable_variables}
        return [v for v in candidates if id(v) in ids], [head.name]
    if not spec:
        raise TrainableError("--trainable is empty; use 'all', 'head' or a regex of variable paths.")
    pat = _pattern(spec)
    chosen = [v for v in candidates if pat.search(v.path)]
    if not chosen:
        examples = ", ".join(v.path for v in candidates[:3])
        raise TrainableError(f"--trainable {spec!r} matches no trainable variable of {model.name!r} "
                             f"(paths look like: {examples}, ...); fix the pattern or use 'head'.")
    return chosen, [spec]


def _leaf_layers(model):
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if not layer._layers]


def check_batchnorm(model):
    """Raises ``TrainableError`` for a BatchNormalization layer of ``model`` that still trains."""
    for layer in _leaf_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            raise TrainableError(
                f"layer {layer.name!r} is BatchNormalization, which normalises with batch statistics that no "
                "per-example clipping covers: DP-SGD refuses it unless it is frozen. Train a pattern that "
                "leaves it out (--trainable head, or a regex), or use a normalisation-free model.")


def apply(model, spec, input_shape=None):
    """Freezes every variable of ``model`` that ``spec`` does not select; returns the record's summary.

    Call it before an optimizer or averages are built: they must cover the
    trained variables only. An unbuilt model is first built for
    ``input_shape`` (one example's shape).

    Returns:
      ``{"spec", "patterns", "variables", "variables_total", "params",
      "params_total"}``: the setting, what it matched, and how many
      variables and parameters train out of all trainable ones.
    """
    if not model.built and input_shape is not None:
        model.build((None,) + tuple(input_shape))
    total = list(model.trainable_variables)
    chosen, patterns = select(model, spec)
    keep = {id(v) for v in chosen}
    if len(keep) < len(total):
        frozen = [v for v in total if id(v) not in keep]
        for v in frozen:
            v.trainable = False
        # Remembered so that a copy can be unfrozen exactly (``unfreeze``).
        model._dp_zoo_frozen_paths = tuple(getattr(model, "_dp_zoo_frozen_paths", ())) + tuple(
            v.path for v in frozen)
        for layer in _leaf_layers(model):
            if layer.weights and not any(id(v) in keep for v in layer.weights):
                # Also puts a frozen BatchNormalization layer in inference mode.
                layer.trainable = False
    check_batchnorm(model)
    return summary(spec, patterns, chosen, total)


def summary(spec, patterns, chosen, total):
    """What the run record states about the trained variables (names are not listed: counts and patterns)."""
    def count(vs):
        return int(sum(math.prod(v.shape) for v in vs))

    return {"spec": ALL if spec is None else str(spec), "patterns": list(patterns), "variables": len(chosen),
            "variables_total": len(total), "params": count(chosen), "params_total": count(total)}


def unfreeze(copy, original):
    """Makes trainable again, in ``copy`` (a clone of ``original``), what ``apply`` froze in ``original``.

    The published copy of a fine-tuned model then loads and trains like any
    other; what was never trainable (BatchNorm's moving statistics) stays so.
    """
    frozen = set(getattr(original, "_dp_zoo_frozen_paths", ()))
    if not frozen:
        return copy
    copy.trainable = True
    for layer in _leaf_layers(copy):
        layer.trainable = True  # a clone's layers come from configs that say False
    for v in copy.variables:
        if v.path in frozen:
            v.trainable = True
    return copy
