"""What an initial checkpoint (``--init``) means for a run's privacy (docs/privacy.md).

A run that starts from weights already trained on the same data set has
not spent only its own budget:

- a private initial checkpoint's DP-SGD runs are composed with this run's
  (one dp-accounting composition; the card's epsilon is the total);
- a non-private one (a baseline, a reproducible run) leaves no guarantee at
  all: the run is refused, or, when the user insists, published as NOT
  differentially private.

Weights trained on another data set (a card naming it, or weights converted
from timm / DeepMind / jax_privacy) are public pretraining; a ``.keras`` file
without a card is the user's declaration that it saw only public data.
"""

import dataclasses
import json
import os
from typing import Optional

PRIVATE_SAME_DATA = "private_same_data"
NONPRIVATE_SAME_DATA = "nonprivate_same_data"
TUNED_SAME_DATA = "tuned_same_data"
PUBLIC_PRETRAINING = "public_pretraining"
DECLARED_PUBLIC = "declared_public"


@dataclasses.dataclass(frozen=True)
class InitProvenance:
    """Where the initial weights come from, as far as privacy is concerned.

    Attributes:
      source: what ``--init`` named (a path or ``zoo:<name>``).
      kind: one of the module's constants.
      dataset: the data set the initial weights were trained on, when a card says.
      prior_runs: ``((sigma, q, steps), ...)``: the DP-SGD runs behind a
        private initial checkpoint trained on this run's data set.
      epsilon: the initial checkpoint's own epsilon, from its card.
      detail: one sentence for the card.
    """

    source: str
    kind: str
    dataset: Optional[str]
    prior_runs: tuple
    epsilon: Optional[float]
    detail: str

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["prior_runs"] = [list(r) for r in self.prior_runs]
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
        from dp_zoo import zoo

        return zoo.card(init_checkpoint[len("zoo:"):] if init_checkpoint.startswith("zoo:") else init_checkpoint)
    if init_checkpoint.endswith(".keras"):
        path = os.path.join(os.path.dirname(os.path.abspath(init_checkpoint)), "card.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    return None


def _runs_of(privacy):
    """The DP-SGD runs a private card's epsilon composes: its prior runs, then its own."""
    runs = [(r["noise_multiplier"], r["sampling_probability"], r["steps"]) for r in privacy.get("prior_runs") or ()]
    if privacy.get("steps"):
        runs.append((privacy["noise_multiplier"], privacy["sampling_probability"], privacy["steps"]))
    return tuple((float(a), float(b), int(c)) for a, b, c in runs)


def provenance(init_checkpoint, dataset, *, card=None):
    """The ``InitProvenance`` of ``init_checkpoint`` for a run on ``dataset``.

    Args:
      init_checkpoint: the run's ``init_checkpoint`` (None: from scratch).
      dataset: the run's data set name.
      card: the init's card if already read (default: ``init_card``).
    """
    if not init_checkpoint:
        return None
    card = init_card(init_checkpoint) if card is None else card
    if card is None:
        if init_checkpoint.endswith(".keras"):
            return InitProvenance(init_checkpoint, DECLARED_PUBLIC, None, (), None,
                                  "a .keras file without a dp_zoo card: the user declared that it was trained "
                                  "on public data only")
        return InitProvenance(init_checkpoint, PUBLIC_PRETRAINING, None, (), None,
                              "converted foreign weights (timm / DeepMind / jax_privacy), public pretraining")
    data = (card.get("data") or {}).get("dataset")
    privacy = card.get("privacy") or {}
    name = card.get("name", init_checkpoint)
    if data != dataset:
        return InitProvenance(init_checkpoint, PUBLIC_PRETRAINING, data, (), privacy.get("epsilon"),
                              f"{name}, trained on {data}: another data set, public pretraining for this run")
    if privacy.get("private") and privacy.get("tuning"):
        # Its epsilon is a tuning total (dp_zoo.tune), not a DP-SGD event that
        # dp-accounting can compose: composing only the selected run's steps
        # would drop the search's cost. Refused by check_allowed.
        return InitProvenance(init_checkpoint, TUNED_SAME_DATA, data, (), privacy["epsilon"],
                              f"{name}, chosen by a private hyper-parameter search on {data} "
                              f"(total epsilon={privacy['epsilon']})")
    if privacy.get("private") and privacy.get("epsilon") is not None:
        return InitProvenance(init_checkpoint, PRIVATE_SAME_DATA, data, _runs_of(privacy), privacy["epsilon"],
                              f"{name}, trained privately on {data} (epsilon={privacy['epsilon']}): its steps are "
                              "composed with this run's")
    reason = (privacy.get("not_private") or {}).get("reason", "a non-private baseline")
    return InitProvenance(init_checkpoint, NONPRIVATE_SAME_DATA, data, (), None,
                          f"{name}, trained on {data} without a privacy guarantee ({reason})")


def check_allowed(prov, *, allow_nonprivate):
    """Refuses a non-private initial checkpoint trained on the same data (unless allowed).

    Raises:
      NonPrivateInitError: with a one-line message naming the reason and the fix.
      ValueError: the checkpoint was chosen by a private hyper-parameter search
        on the same data: its total cannot be composed with a new run yet.
    """
    if prov is not None and prov.kind == TUNED_SAME_DATA:
        raise ValueError(
            f"--init {prov.source}: {prov.detail}; dp_zoo cannot yet compose a tuning total with a new run on "
            f"{prov.dataset} (composing only the selected run would drop the search's cost). Start from scratch "
            "or from weights trained on other data.")
    if prov is not None and prov.kind == NONPRIVATE_SAME_DATA and not allow_nonprivate:
        raise NonPrivateInitError(
            f"--init {prov.source}: {prov.detail}, so a model fine-tuned from it on {prov.dataset} has no "
            "privacy guarantee. Start from scratch, from a private checkpoint, or from weights trained on "
            "other data; or pass --allow-nonprivate-init to publish the result as NOT differentially private.")


def not_private_detail(prov):
    """The card's reason when a non-private initial checkpoint was allowed."""
    return f"initialised from {prov.detail}"
