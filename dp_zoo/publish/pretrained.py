"""``dp_zoo.create_model``: an architecture, freshly initialised or with a published zoo entry's weights.

timm's ``create_model(name, pretrained=True)``: the registry builds the
architecture (``dp_zoo.models.create_model``), the zoo supplies the weights
(``zoo.load(entry, include_preprocessing=False)``, verified as every load is).
"""

from dp_zoo.publish import zoo


def create_model(name, *, num_classes=None, input_shape=None, pretrained=False, **kwargs):
    """``dp_zoo.create_model``: an architecture, freshly initialised or with a zoo entry's weights.

    Args:
      name: architecture (``dp_zoo.list_architectures()``).
      num_classes, input_shape, **kwargs: as ``dp_zoo.models.create_model``.
      pretrained: False: fresh weights. True: the weights of the one published
        zoo entry of this architecture; an entry name (e.g.
        ``"wrn_digits_eps8"``) picks one where there are several. The model is
        the bare network (normalised input, logits), as a fresh one, with
        ``model.card`` attached; ``dp_zoo.load(entry)`` gives the same weights
        behind a pixel input.

    Raises:
      ValueError: no published entry of this architecture (the message names
        the architectures that have one), several (it names them), or a
        ``num_classes`` / ``input_shape`` / override the weights do not fit.
    """
    from dp_zoo.models._registry import create_model as build

    if not pretrained:
        if num_classes is None:
            raise ValueError("num_classes is required unless pretrained weights give it; pass e.g. num_classes=10.")
        return build(name, num_classes=num_classes, input_shape=input_shape, **kwargs)
    entry = _pretrained_entry(name, pretrained)
    if kwargs:
        raise ValueError(f"pretrained weights of {entry!r} fix {name}'s configuration; drop {sorted(kwargs)} or "
                         "pass pretrained=False.")
    model = zoo.load(entry, include_preprocessing=False)
    have = model.card["model"]
    for what, want, got in (("num_classes", num_classes, have["num_classes"]),
                            ("input_shape", input_shape, have["input_shape"])):
        if want is not None and list(want if isinstance(want, (list, tuple)) else [want]) != \
                list(got if isinstance(got, list) else [got]):
            raise ValueError(f"{entry!r} was trained with {what}={got}, not {want}; omit {what}, or fine-tune "
                             f"to another one with: python -m dp_zoo.train --model {name} --init {entry} ...")
    return model


def _pretrained_entry(architecture, pretrained):
    """The zoo entry whose weights ``create_model(architecture, pretrained=...)`` loads."""
    published = {n: e for n, e in zoo.entries().items() if e.get("manifest_sha256") or e.get("remote")}
    mine = sorted(n for n, e in published.items() if e["architecture"] == architecture)
    if isinstance(pretrained, str):
        if pretrained not in mine:
            raise ValueError(f"pretrained={pretrained!r} is not a published zoo entry of {architecture}; "
                             f"those are: {', '.join(mine) or 'none'}.")
        return pretrained
    if len(mine) == 1:
        return mine[0]
    if mine:
        raise ValueError(f"{architecture} has several published zoo entries: pass pretrained=<entry>, one of "
                         f"{', '.join(mine)}.")
    with_weights = sorted({e["architecture"] for e in published.values()})
    raise ValueError(f"no published zoo weights for {architecture}; architectures with weights: "
                     f"{', '.join(with_weights)} (dp_zoo.list_models() lists the entries).")
