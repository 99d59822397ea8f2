"""Model cards that record the privacy guarantee, built only from a run record.

A card is ``card.json`` (versioned schema), ``README.md`` (Kaggle Models /
Hugging Face style, YAML metadata header), ``card.html`` (a self-contained
page with plots: epsilon spent vs step, accuracy vs step, and the zoo's
privacy-utility curve) and the plots as PNG files under ``plots/``. This
module holds what a card states (``ModelCard``: the headline and
``card.json``); ``dp_zoo.cards.markdown`` lays it out as README.md and
``dp_zoo.cards.html`` draws the plots and the HTML page.

Every number in a card is copied from the run record (``run_record.json``,
schema in docs/design.md), whose privacy section the accountant computed. The card never computes an epsilon. The one rounding it does is
for the headline, and it rounds epsilon *up* (a mechanism that is
(eps, delta)-DP is also (eps', delta)-DP for every eps' >= eps, so the
rounded statement is still true); tables and ``card.json`` keep the
record's exact values.

A TAN simulation (Sander et al. 2023) is trained with a scaled-down batch and
noise: its card's first line says it is not private at the stated epsilon.

After Mitchell et al. 2019, "Model Cards for Model Reporting".
"""

import copy
import dataclasses
import hashlib
import json
import math
import os
from typing import Optional

from dp_zoo.cards import html as card_html, markdown as card_markdown
from dp_zoo.cards.markdown import ceil_sig, fmt_eps  # noqa: F401  (the card's rounding, used below)
from dp_zoo.cards.run_record import check_run_record

CARD_SCHEMA_VERSION = 1

THREAT_MODEL = "docs/privacy.md of dp_zoo (the threat model and what the guarantee assumes)"

SCOPE = (
    "Covered: everything this training run released, i.e. the final weights, "
    "the EMA/Polyak averages, every intermediate checkpoint and the card's "
    "history (DP-SGD is private for the whole sequence of iterates, and the "
    "accountant composed every step that was taken, including the steps of a "
    "private initial checkpoint trained on the same data set, if any). The "
    "adversary may know the code, the configuration, everything published "
    "and every training example but one; batch selection and noise were "
    "secret. Each single training example is protected (add-or-remove-one "
    "adjacency). "
    "NOT covered: the choice of hyper-parameters, if they were searched on "
    "this data set (the search's own runs are not counted); other models "
    "released from the same data set (their epsilons add up); any privacy "
    "audit or other analysis run on the same data; a person who contributed "
    "several examples, beyond what group privacy gives; public pretraining "
    "data; wall-clock timings, which are operational. Threat model: "
    + THREAT_MODEL + "."
)


_NOT_COVERED_SEARCH = ("NOT covered: the choice of hyper-parameters, if they were searched on "
                       "this data set (the search's own runs are not counted); ")


def scope(privacy):
    """The card's scope sentence for a run record's ``privacy`` section: ``SCOPE``, or for a tuned
    run (``privacy.tuning``) what the tuning covers and where its grid came from, as stated."""
    t = privacy.get("tuning")
    if not t:
        return SCOPE
    return SCOPE.replace(_NOT_COVERED_SEARCH, (
        "Covered as well: the search among the grid in privacy.tuning that chose this model (a secret "
        "random number of private trials, never published, each a grid point drawn at random, trained "
        "with DP-SGD and scored through a Gaussian mechanism on held-out training data, the best "
        "released; Papernot & Steinke 2022); epsilon is the total. The base configuration and the grid "
        "were fixed before the tuning, from the source stated in privacy.tuning.search_space_source: "
        f"\"{t['search_space_source']}\". NOT covered: any use of this data set to choose that base "
        "configuration or grid; "))


def record_sha256(record):
    """SHA-256 of the canonical JSON of a run record (ties a card to its record)."""
    blob = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------------------


@dataclasses.dataclass
class ModelCard:
    """Everything a card states, taken from one run record.

    Attributes:
      name: zoo entry name.
      record: the run record dict (engine's record plus the CLI's "data" and
        "metrics"). Kept verbatim; the card only selects and lays out.
      audit: optional empirical privacy audit result dict.
    """

    name: str
    record: dict
    audit: Optional[dict] = None

    @classmethod
    def from_run_record(cls, name, record, audit=None):
        """Validates (``check_run_record``) and wraps a copy of a run record.

        Raises:
          ValueError: the record is incomplete or inconsistent.
        """
        check_run_record(record)
        record = copy.deepcopy(record)
        return cls(name=name, record=record, audit=audit or record.get("audit"))

    # -- derived facts (no arithmetic on epsilon) -------------------------------

    @property
    def privacy(self):
        return self.record["privacy"]

    @property
    def is_simulation(self):
        return bool(self.privacy.get("tan_simulation"))

    def headline(self):
        """The first line of every rendering: the guarantee, or its absence."""
        p = self.privacy
        if self.is_simulation:
            t = p["tan_simulation"]
            return (
                "TAN SIMULATION: not private at the stated epsilon. This run simulates a "
                f"full-size run whose accountant epsilon is {fmt_eps(t['epsilon_full_run'])} "
                f"(sigma {t['noise_multiplier_full_run']}, batch {t['batch_size_full_run']}); the "
                f"simulation itself is only ({fmt_eps(p['epsilon'])}, {p['delta']:g})-DP."
            )
        if not p["private"] and p.get("not_private"):
            np_ = p["not_private"]
            return f"NOT differentially private ({np_['reason']}): {np_['detail']}."
        if not p["private"]:
            return "NOT PRIVATE: a non-private baseline trained without clipping or noise; no privacy guarantee."
        tuned = ""
        if p.get("tuning"):
            t = p["tuning"]
            tuned = (f" Total over private hyper-parameter tuning (a secret number of trials, "
                     f"{t['trial_distribution']['kind']} with E[K] = "
                     f"{t['trial_distribution']['expected_trials']:.3g}; each trial alone "
                     f"{fmt_eps(t['per_trial_epsilon'])}).")
        return (
            f"({fmt_eps(p['epsilon'])}, {p['delta']:g})-differentially private "
            f"({p['accountant'].upper()} accountant, {p['sampling']} sampling, "
            f"{p['adjacency'].replace('_', '-')} adjacency, privacy unit: one {p['privacy_unit']})."
            + tuned
        )

    def accuracy(self):
        """(value, which) of the headline accuracy: EMA if measured, else last."""
        m = self.record["metrics"]
        if m.get("test_accuracy_ema") is not None:
            return m["test_accuracy_ema"], "ema"
        return m["test_accuracy_last"], "last"

    def to_json(self):
        """The ``card.json`` dict (headline first; sections copied verbatim)."""
        r = self.record
        c = r["config"]
        p = self.privacy
        return {
            "headline": self.headline(),
            "card_schema_version": CARD_SCHEMA_VERSION,
            "name": self.name,
            "run_record_sha256": record_sha256(r),
            "privacy": p,
            "audit": self.audit,
            "training": {
                "l2_clip": p.get("l2_clip"),
                "noise_multiplier": p.get("noise_multiplier"),
                "sampling": p.get("sampling"),
                "sampling_probability": p.get("sampling_probability"),
                "logical_batch_size": c["batch_size"],
                "physical_batch_size": c["physical_batch_size"],
                "augmult_k": c["augmult"]["num_views"],
                "augmentation": c["augmult"]["style"],
                "ema_decay": c["ema"]["decay"],
                "optimizer": c["optim"],
                # Records from before the option ran float32 (there was no other).
                "precision": c.get("precision", "float32"),
                "steps_planned": r.get("steps_planned"),
                "steps_completed": r.get("steps_completed"),
                "seed": c["seed"],
                "published_weights": r.get("published_weights"),
            },
            "data": r["data"],
            "model": r["model"],
            "metrics": r["metrics"],
            "software": r["software"],
            "hardware": r["hardware"],
            "operational": r.get("operational"),
            "scope": scope(p),
            "threat_model": THREAT_MODEL,
            "config": c,
            "history": r["history"],
        }

    # -- renderings ---------------------------------------------------------------

    def to_markdown(self):
        """README.md: YAML metadata header, then the headline, then the card."""
        return card_markdown.render(self, card_html.plot_keys(self))

    def plots(self, zoo_points=None):
        """The plots with data, as PNG bytes: ``card_html.plots`` (key -> (title, png bytes))."""
        return card_html.plots(self, zoo_points)

    def to_html(self, zoo_points=None, plots=None):
        """card.html: a standalone page (plots embedded as PNG data URIs)."""
        plots = plots if plots is not None else self.plots(zoo_points)
        return card_html.render(self, plots)

    def write(self, directory, zoo_points=None):
        """Writes card.json, README.md, card.html and plots/*.png (those with data) into ``directory``.

        Returns:
          list of the relative paths written.
        """
        plots = self.plots(zoo_points)
        os.makedirs(os.path.join(directory, "plots"), exist_ok=True)
        written = []
        for key, (_, data) in plots.items():
            with open(os.path.join(directory, card_html.PLOT_FILES[key]), "wb") as f:
                f.write(data)
            written.append(card_html.PLOT_FILES[key])
        with open(os.path.join(directory, "card.json"), "w") as f:
            json.dump(self.to_json(), f, indent=2)
        with open(os.path.join(directory, "README.md"), "w") as f:
            f.write(self.to_markdown())
        with open(os.path.join(directory, "card.html"), "w") as f:
            f.write(self.to_html(plots=plots))
        return written + ["card.json", "README.md", "card.html"]
