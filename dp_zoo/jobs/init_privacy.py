"""What an initial checkpoint (``--init``) means for a run's privacy (docs/privacy.md).

A run that starts from weights already trained on its data set has not spent
only its own budget, and neither has one whose initial weights descend,
through any number of ``--init`` steps, from weights trained on it. The whole
chain is followed to its first ancestor, and every ancestor trained on the
run's data set counts:

- a private one: its DP-SGD runs are composed with this run's (one
  dp-accounting composition; the card's epsilon is the total);
- one chosen by private hyper-parameter tuning: refused (its epsilon is a
  tuning total, not a DP-SGD event dp-accounting can compose);
- a non-private one (a baseline, a reproducible run, a withdrawn model), or
  an ancestry no record tells: no guarantee is left; the run is refused,
  or, when the user insists, published as NOT differentially private.

Each record's ``model.init`` carries the chain (``ancestors``: the initial
checkpoint, its own initial checkpoint, and so on, each with its data set,
its own DP-SGD runs and whether it was tuned), so that a later run can
follow it without the files. Weights trained only on other data sets (a
card naming them, or weights converted from timm / DeepMind / jax_privacy)
are public pretraining. A ``.keras`` file without a card is the user's
declaration that it saw only public data, unless its bytes or weights are
those of an artifact dp_zoo published (``known_weights``): it then keeps
that artifact's provenance.
"""

import dataclasses
import json
import os
from typing import Optional

from dp_zoo.publish import known_weights

PRIVATE_SAME_DATA = "private_same_data"
NONPRIVATE_SAME_DATA = "nonprivate_same_data"
TUNED_SAME_DATA = "tuned_same_data"
UNKNOWN_ANCESTRY = "unknown_ancestry"
PUBLIC_PRETRAINING = "public_pretraining"
DECLARED_PUBLIC = "declared_public"
# The kinds that leave a fine-tuned model no guarantee (refused unless --allow-nonprivate-init).
VOID = (NONPRIVATE_SAME_DATA, UNKNOWN_ANCESTRY)
# An ancestor's origin: a dp_zoo card, or one of the chain's possible first steps.
CARD, DECLARED, CONVERTED, UNKNOWN = "card", "declared_public", "converted", "unknown"


@dataclasses.dataclass(frozen=True)
class InitProvenance:
    """Where the initial weights come from, as far as privacy is concerned.

    Attributes:
      source: what ``--init`` named (a path or ``zoo:<name>``).
      kind: one of the module's constants.
      dataset: the data set the initial weights were trained on, when a card says.
      prior_runs: ``((sigma, q, steps), ...)``: the DP-SGD runs of every
        private ancestor trained on this run's data set, oldest first.
      epsilon: the initial checkpoint's own epsilon, from its card.
      detail: one sentence for the card.
      ancestors: the chain, nearest first: one dict per ancestor (``source``,
        ``name``, ``origin``, ``dataset``, ``private``, ``tuned``, ``runs``
        (its own DP-SGD runs), ``epsilon``, ``reason``).
    """

    source: str
    kind: str
    dataset: Optional[str]
    prior_runs: tuple
    epsilon: Optional[float]
    detail: str
    ancestors: tuple = ()

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["prior_runs"] = [list(r) for r in self.prior_runs]
        d["ancestors"] = [dict(a) for a in self.ancestors]
        return d


class NonPrivateInitError(ValueError):
    """The initial checkpoint saw this data set without privacy (the message says what to do)."""


def init_card(init_checkpoint):
    """The dp_zoo card (a dict) that comes with ``init_checkpoint``, or None.

    A zoo name (``zoo:<name>``) and an artifact directory have their verified
    cards; a ``.keras`` file has one when it sits in a published artifact
    (``card.json`` beside it).
    """
    if init_checkpoint.startswith("zoo:") or os.path.isdir(init_checkpoint):
        from dp_zoo.publish import zoo

        return zoo.card(init_checkpoint[len("zoo:"):] if init_checkpoint.startswith("zoo:") else init_checkpoint)
    if init_checkpoint.endswith(".keras"):
        path = os.path.join(os.path.dirname(os.path.abspath(init_checkpoint)), "card.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    return None


def _first_step(source, origin, dataset=None):
    """An ancestor without a card: where the chain starts (declared, converted) or stops being known."""
    return {"source": source, "name": None, "origin": origin, "dataset": dataset, "private": None, "tuned": False,
            "runs": [], "epsilon": None, "reason": None}


def card_facts(card, source, name=None):
    """The ancestor dict of the weights ``card`` describes (``source``: where they came from)."""
    p = card.get("privacy") or {}
    private = bool(p.get("private")) and p.get("epsilon") is not None and not card.get("withdrawn")
    reason = None
    if card.get("withdrawn"):
        reason = str(card["withdrawn"])
    elif not private:
        reason = (p.get("not_private") or {}).get("reason", "a non-private baseline")
    runs = [[float(p["noise_multiplier"]), float(p["sampling_probability"]), int(p["steps"])]] \
        if private and p.get("steps") else []
    return {"source": source, "name": name or card.get("name") or source, "origin": CARD,
            "dataset": (card.get("data") or {}).get("dataset"), "private": private,
            "tuned": private and bool(p.get("tuning")), "runs": runs,
            "epsilon": p.get("epsilon") if private else None, "reason": reason}


def card_chain(card, source, name=None):
    """``[the card's ancestor dict, its initial checkpoint's, ...]`` down to the first ancestor."""
    head = card_facts(card, source, name)
    if "init" not in (card.get("model") or {}):
        return [head, _first_step(f"the start of {head['name']}", UNKNOWN)]
    init = card["model"]["init"]
    if init is None:  # trained from scratch
        legacy = [r for r in (card.get("privacy") or {}).get("prior_runs") or ()]
        if legacy and head["private"]:  # composed runs without a recorded chain: they were on this data set
            return [head, {**card_facts(card, source, f"the runs {head['name']}'s card composes"),
                           "runs": [[r["noise_multiplier"], r["sampling_probability"], r["steps"]] for r in legacy]}]
        return [head]
    if "ancestors" in init:  # a field a record lacks reads as unknown (conservative)
        return [head, *({**_first_step(None, UNKNOWN), **a} for a in init["ancestors"])]
    # A record from before chains were recorded: complete only when its start was a first step.
    if init.get("kind") == DECLARED_PUBLIC:
        return [head, _first_step(init.get("source"), DECLARED)]
    if init.get("kind") == PUBLIC_PRETRAINING and init.get("dataset") is None:
        return [head, _first_step(init.get("source"), CONVERTED)]
    return [head, _first_step(init.get("source"), UNKNOWN, init.get("dataset"))]


def _describe(a):
    if a["origin"] == UNKNOWN:
        return (f"{a['source']}, whose own ancestry no record carries (a record from before dp_zoo recorded "
                "whole --init chains)")
    if a["origin"] != CARD:
        return f"{a['source']} ({a['origin'].replace('_', ' ')})"
    if a["tuned"]:
        return (f"{a['name']}, chosen by a private hyper-parameter search on {a['dataset']} "
                f"(total epsilon={a['epsilon']})")
    if a["private"]:
        return f"{a['name']}, trained privately on {a['dataset']} (epsilon={a['epsilon']})"
    if a["reason"]:
        return f"{a['name']}, trained on {a['dataset']} without a privacy guarantee ({a['reason']})"
    return f"{a['name']}, trained on {a['dataset']}"


def _chain_of(init_checkpoint):
    """The ancestor chain of ``init_checkpoint`` when it has no card beside it."""
    if not init_checkpoint.endswith(".keras"):
        return [_first_step(init_checkpoint, CONVERTED)]
    found = known_weights.match(init_checkpoint)
    if found is None:
        return [_first_step(init_checkpoint, DECLARED)]
    name = f"{found.card.get('name')} (the published weights, recognised by their {found.how})"
    return card_chain(found.card, init_checkpoint, name)


def provenance(init_checkpoint, dataset, *, card=None):
    """The ``InitProvenance`` of ``init_checkpoint`` for a run on ``dataset``, its whole chain followed.

    Args:
      init_checkpoint: the run's ``init_checkpoint`` (None: from scratch).
      dataset: the run's data set name.
      card: the init's card if already read (default: ``init_card``).
    """
    if not init_checkpoint:
        return None
    card = init_card(init_checkpoint) if card is None else card
    chain = card_chain(card, init_checkpoint) if card is not None else _chain_of(init_checkpoint)
    head, ancestors = chain[0], tuple(chain)
    same = [a for a in chain if a["origin"] == CARD and a["dataset"] == dataset]
    unknown = [a for a in chain if a["origin"] == UNKNOWN or (a["origin"] == CARD and not a["dataset"])]
    lineage = _describe(head)
    behind = [a for a in chain[1:] if a in same or a in unknown]
    if behind:
        lineage += ", which descends from " + "; ".join(_describe(a) for a in behind)

    def prov(kind, detail, prior_runs=()):
        return InitProvenance(init_checkpoint, kind, head["dataset"], prior_runs, head["epsilon"], detail, ancestors)

    if any(a["tuned"] for a in same):
        return prov(TUNED_SAME_DATA, lineage)
    if unknown:
        return prov(UNKNOWN_ANCESTRY, lineage)
    if any(not a["private"] for a in same):
        return prov(NONPRIVATE_SAME_DATA, lineage)
    if same:
        runs = tuple((float(s), float(q), int(t)) for a in reversed(same) for s, q, t in a["runs"])
        return prov(PRIVATE_SAME_DATA, f"{lineage}: the DP-SGD runs of every ancestor trained on {dataset} are "
                                       "composed with this run's", runs)
    if head["origin"] == DECLARED:
        return prov(DECLARED_PUBLIC, "a .keras file without a dp_zoo card: the user declared that it was trained "
                                     "on public data only")
    if head["origin"] == CONVERTED:
        return prov(PUBLIC_PRETRAINING, "converted foreign weights (timm / DeepMind / jax_privacy), public pretraining")
    return prov(PUBLIC_PRETRAINING, f"{head['name']}, trained on {head['dataset']}: another data set, public "
                                    "pretraining for this run")


def check_allowed(prov, *, allow_nonprivate):
    """Refuses an initial checkpoint whose chain includes a non-private or tuned ancestor on the same data
    (the non-private one unless allowed), or an ancestry no record tells (unless allowed).

    Raises:
      NonPrivateInitError: with a one-line message naming the reason and the fix.
      ValueError: an ancestor on the same data was chosen by a private
        hyper-parameter search: its total cannot be composed with a new run yet.
    """
    if prov is not None and prov.kind == TUNED_SAME_DATA:
        raise ValueError(
            f"--init {prov.source}: {prov.detail}; dp_zoo cannot yet compose a tuning total with a new run on "
            "that data set (composing only the selected run would drop the search's cost). Start from scratch "
            "or from weights trained on other data.")
    if prov is not None and prov.kind == NONPRIVATE_SAME_DATA and not allow_nonprivate:
        raise NonPrivateInitError(
            f"--init {prov.source}: {prov.detail}, so a model fine-tuned from it on that data set has no "
            "privacy guarantee. Start from scratch, from a private checkpoint, or from weights trained on "
            "other data; or pass --allow-nonprivate-init to publish the result as NOT differentially private.")
    if prov is not None and prov.kind == UNKNOWN_ANCESTRY and not allow_nonprivate:
        raise NonPrivateInitError(
            f"--init {prov.source}: {prov.detail}; dp_zoo cannot tell whether that ancestry saw this run's data "
            "set. Start from scratch, from a checkpoint exported by this version of dp_zoo (its record carries its "
            "whole chain), or from weights trained on other data; or pass --allow-nonprivate-init to publish the "
            "result as NOT differentially private.")


def not_private_reason(prov):
    """The card's not-private reason when an initial checkpoint in ``VOID`` was allowed."""
    return "non-private initial checkpoint" if prov.kind == NONPRIVATE_SAME_DATA else \
        "initial checkpoint of unknown ancestry"


def not_private_detail(prov):
    """The card's detail when an initial checkpoint in ``VOID`` was allowed."""
    return f"initialised from {prov.detail}"
