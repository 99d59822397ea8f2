"""Model cards that record the privacy guarantee, built only from a run record.

A card is ``card.json`` (versioned schema), ``README.md`` (Kaggle Models /
Hugging Face style, YAML metadata header), ``card.html`` (a self-contained
page with plots: epsilon spent vs step, accuracy vs step, and the zoo's
privacy-utility curve) and the plots as PNG files under ``plots/``.

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

import base64
import copy
import dataclasses
import hashlib
import html
import io
import json
import math
import os
from typing import Optional

CARD_SCHEMA_VERSION = 1

# Sections the run record contract requires before a card may be written.
REQUIRED_SECTIONS = ("config", "privacy", "history", "model", "data", "metrics", "software", "hardware")
REQUIRED_PRIVACY = (
    "private", "epsilon", "delta", "accountant", "noise_multiplier", "sampling",
    "sampling_probability", "dataset_size", "expected_batch_size", "steps", "l2_clip",
    "adjacency", "privacy_unit", "tan_simulation",
)

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

PLOT_FILES = {
    "epsilon": "plots/epsilon_vs_step.png",
    "accuracy": "plots/accuracy_vs_step.png",
    "zoo": "plots/privacy_utility.png",
}


def ceil_sig(x, digits=4):
    """``x`` rounded *up* to ``digits`` significant digits (for display).

    Rounding a privacy loss down would claim a stronger guarantee than the
    accountant gave; rounding up keeps the statement true.
    """
    if x is None or x == 0 or not math.isfinite(x):
        return x
    scale = 10 ** (digits - 1 - math.floor(math.log10(abs(x))))
    # The small tolerance stops 2.0000000000000004-style float noise from
    # bumping an exactly representable value up a digit.
    return math.ceil(x * scale - 1e-9) / scale


def fmt_eps(x):
    """Headline formatting of an epsilon: rounded up, at most 4 significant digits."""
    return f"{ceil_sig(x):g}"


def _yaml_scalar(v):
    """A JSON scalar that YAML 1.1 readers also parse as the same value.

    YAML 1.1 (PyYAML, the Hugging Face hub) reads ``1e-05`` as a string; its
    float syntax needs a dot in the mantissa, so ``1.0e-05`` is written.
    """
    s = json.dumps(v)
    if isinstance(v, float) and "e" in s and "." not in s.split("e")[0]:
        mant, exp = s.split("e")
        s = f"{mant}.0e{exp}"
    return s


def record_sha256(record):
    """SHA-256 of the canonical JSON of a run record (ties a card to its record)."""
    blob = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


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
        """Validates and wraps a run record.

        Raises:
          ValueError: a required section or privacy field is missing, or the
            privacy section contradicts itself (a private run without an
            epsilon, a non-finite epsilon).
        """
        missing = [k for k in REQUIRED_SECTIONS if k not in record]
        if missing:
            raise ValueError(
                f"run record lacks the section(s) {missing}; a card is built only from a "
                "complete run record (python -m dp_zoo.train writes one as run_record.json)."
            )
        p = record["privacy"]
        missing = [k for k in REQUIRED_PRIVACY if k not in p]
        if missing:
            raise ValueError(f"run record's privacy section lacks {missing}; it must come from PrivacyLedger.summary().")
        if p["private"]:
            if p["epsilon"] is None or not math.isfinite(float(p["epsilon"])):
                raise ValueError(
                    f"the run is marked private but its epsilon is {p['epsilon']!r}; "
                    "refusing to write a card without the accountant's epsilon."
                )
            if not p.get("accountant"):
                raise ValueError("the run is marked private but names no accountant.")
        elif p.get("epsilon") is not None:
            raise ValueError("a non-private run record carries an epsilon; the record is inconsistent.")
        for k in ("test_accuracy_last",):
            if k not in record["metrics"]:
                raise ValueError(f"run record's metrics lack {k!r}.")
        record = copy.deepcopy(record)
        return cls(name=name, record=record, audit=audit or record.get("audit"))

    # Kept for callers written against the first version of this module.
    from_run = from_run_record

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
        return (
            f"({fmt_eps(p['epsilon'])}, {p['delta']:g})-differentially private "
            f"({p['accountant'].upper()} accountant, {p['sampling']} sampling, "
            f"{p['adjacency'].replace('_', '-')} adjacency, privacy unit: one {p['privacy_unit']})."
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
            "scope": SCOPE,
            "threat_model": THREAT_MODEL,
            "config": c,
            "history": r["history"],
        }

    # -- renderings ---------------------------------------------------------------

    def _yaml_header(self):
        """Hugging Face / Kaggle Models metadata (a YAML subset written by hand).

        Values are JSON scalars, which are valid YAML, so no YAML library is
        needed to write or read them.
        """
        p, d = self.privacy, self.record["data"]
        acc, which = self.accuracy()
        j = _yaml_scalar
        lines = [
            "---",
            "library_name: keras",
            "pipeline_tag: image-classification",
            "tags:",
            "- differential-privacy",
            "- dp-sgd",
            "- image-classification",
            "- dp_zoo",
        ]
        if self.is_simulation:
            lines.append("- tan-simulation-not-private")
        lines += [
            "datasets:",
            f"- {j(d['dataset'])}",
            "differential_privacy:",
            f"  private: {j(bool(p['private']) and not self.is_simulation)}",
            f"  epsilon: {j(p['epsilon'])}",
            f"  delta: {j(p['delta'])}",
            f"  accountant: {j(p['accountant'])}",
            f"  adjacency: {j(p['adjacency'])}",
            f"  privacy_unit: {j(p['privacy_unit'])}",
            f"  tan_simulation: {j(self.is_simulation)}",
            "model-index:",
            f"- name: {j(self.name)}",
            "  results:",
            "  - task:",
            "      type: image-classification",
            "    dataset:",
            f"      name: {j(d['dataset'])}",
            f"      type: {j(d['dataset'])}",
            f"      split: {j(d['test_split'])}",
            "    metrics:",
            "    - type: accuracy",
            f"      value: {j(acc)}",
            f"      name: {j('test accuracy (' + which + ' weights)')}",
            "---",
        ]
        return lines

    def to_markdown(self):
        """README.md: YAML metadata header, then the headline, then the card."""
        j = self.to_json()
        p, m, d, mod = j["privacy"], j["metrics"], j["data"], j["model"]
        t = j["training"]
        lines = self._yaml_header() + ["", f"# {self.name}", "", f"**{j['headline']}**", ""]
        if p.get("nominal_epsilon"):
            n = p["nominal_epsilon"]
            lines += [f"> Not a guarantee: had this run been private, the accountant's epsilon for its "
                      f"configuration would be {n.get('pld')} (PLD) / {n.get('rdp')} (RDP).", ""]
        lines += ["## Privacy guarantee", "", "| quantity | value |", "|---|---|"]
        rows = [
            ("epsilon (reported accountant)", p["epsilon"]),
            ("epsilon (PLD)", p.get("epsilon_pld")),
            ("epsilon (RDP)", p.get("epsilon_rdp")),
            ("delta", p["delta"]),
            ("accountant", f"{p['accountant']} (dp-accounting {p.get('dp_accounting_version')})"),
            ("adjacency / privacy unit", f"{p['adjacency']} / one {p['privacy_unit']}"),
            ("sampling", p["sampling"]),
            ("sampling probability q", p["sampling_probability"]),
            ("dataset size N", p["dataset_size"]),
            ("expected batch size qN", p["expected_batch_size"]),
            ("noise multiplier sigma", p["noise_multiplier"]),
            ("clipping norm C", p["l2_clip"]),
            ("steps", p["steps"]),
        ]
        if p.get("randomness"):
            rows.append(("batch selection and noise", p["randomness"]))
        if p.get("accountant_note"):
            rows.append(("accountant note", p["accountant_note"]))
        if p.get("prior_runs"):
            rows.append(("composed with the initial checkpoint's DP-SGD runs on this data set", "; ".join(
                f"sigma={r['noise_multiplier']}, q={r['sampling_probability']}, {r['steps']} steps"
                for r in p["prior_runs"])))
        if p.get("nonfinite_steps_skipped"):
            rows.append(("steps skipped for non-finite gradients (still accounted)", p["nonfinite_steps_skipped"]))
        if p.get("target_epsilon") is not None:
            rows.append(("target epsilon (budget the run was stopped at)", p["target_epsilon"]))
        if self.audit:
            rows.append(("empirical audit: epsilon lower bound", self.audit.get("epsilon_lower_bound")))
        if self.is_simulation:
            ts = p["tan_simulation"]
            rows += [
                ("TAN simulation factor", ts["factor"]),
                ("epsilon of the simulated full run (NOT this model's)", ts["epsilon_full_run"]),
                ("sigma of the full run", ts["noise_multiplier_full_run"]),
                ("batch size of the full run", ts["batch_size_full_run"]),
            ]
        lines += [f"| {k} | {v} |" for k, v in rows]
        evaluated_on = m.get("evaluated_on", "test")
        lines += [
            "",
            "## Results",
            "",
            f"Accuracy on the held-out `{evaluated_on}` split (`{d['test_split']}`, {d['test_size']} examples):",
            "",
            "| weights | accuracy |",
            "|---|---|",
            f"| last | {m['test_accuracy_last']} |",
            f"| EMA | {m.get('test_accuracy_ema')} |",
            f"| Polyak | {m.get('test_accuracy_polyak')} |",
            "",
            f"Published weights: {t['published_weights'] or 'last'}.",
            "",
            "## Training",
            "",
            "| quantity | value |",
            "|---|---|",
            f"| architecture | {mod['architecture']} |",
            f"| parameters | {mod['num_params']} |",
            f"| input shape (H, W, C) | {mod['input_shape']} |",
            f"| classes | {mod['num_classes']} |",
            f"| logical batch size | {t['logical_batch_size']} |",
            f"| physical batch size | {t['physical_batch_size']} |",
            f"| augmentation multiplicity K | {t['augmult_k']} |",
            f"| augmentation | {t['augmentation']} |",
            f"| EMA decay | {t['ema_decay']} |",
            f"| optimizer | {t['optimizer']['name']} |",
            f"| learning rate | {t['optimizer']['learning_rate']} |",
            f"| steps completed | {t['steps_completed']} |",
            f"| steps planned | {t['steps_planned']} |",
            f"| seed | {t['seed']} |",
            f"| wall time (s; operational, not covered by the guarantee) | {(j['operational'] or {}).get('wall_time_s')} |",
            "",
            "## Data",
            "",
            f"- data set: {d['dataset']}",
            f"- training split: `{d['train_split']}`, N = {d['train_size']}",
            f"- test split: `{d['test_split']}`, {d['test_size']} examples",
            f"- public pretraining data: {d.get('public_pretraining_data') or 'none'}",
            f"- initial checkpoint: {mod.get('init_checkpoint') or 'none (trained from scratch)'}"
            + (f" ({mod['init']['detail']})" if mod.get("init") else ""),
            f"- input normalization: mean {d['mean']}, std {d['std']} (of x/255; inside the SavedModel)",
            "",
            "## Software and hardware",
            "",
            *[f"- {k}: {v}" for k, v in sorted(j["software"].items())],
            f"- platform: {j['hardware'].get('platform')}",
            f"- devices: {', '.join(j['hardware'].get('devices') or [])}",
            f"- replicas: {j['hardware'].get('num_replicas')}",
            "",
            "## Scope of the guarantee",
            "",
            SCOPE,
            "",
            "## Plots",
            "",
            f"![epsilon spent vs step]({PLOT_FILES['epsilon']})",
            f"![accuracy vs step]({PLOT_FILES['accuracy']})",
            f"![privacy-utility curve of the zoo]({PLOT_FILES['zoo']})",
            "",
            "## Use",
            "",
            "```python",
            "import dp_zoo",
            f'model = dp_zoo.load("{self.name}")   # model.card holds this card',
            "```",
            "",
            "Serving: `saved_model/1/` (TF Serving layout), signature `serving_default`: uint8 images "
            f"`[N, {mod['input_shape'][0]}, {mod['input_shape'][1]}, {mod['input_shape'][2]}]` -> "
            "`probabilities`, `logits`.",
            "",
        ]
        return "\n".join(lines)

    # -- plots and HTML -------------------------------------------------------------

    def plots(self, zoo_points=None):
        """Renders the plots as PNG bytes.

        Args:
          zoo_points: optional list of dicts ``{"name", "epsilon", "accuracy",
            "source"}`` (epsilon None for a non-private baseline; source
            "measured" or "paper") for the privacy-utility curve. This card's
            own point is added.

        Returns:
          dict key -> (title, png bytes); keys from ``PLOT_FILES``.
        """
        import matplotlib

        matplotlib.use("Agg")  # no display here or on a server
        import matplotlib.pyplot as plt

        def png(fig):
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
            plt.close(fig)
            return buf.getvalue()

        hist = [h for h in self.record["history"] if h.get("step") is not None]
        out = {}

        fig, ax = plt.subplots(figsize=(4, 3))
        pts = [(h["step"], h["epsilon"]) for h in hist if h.get("epsilon") is not None]
        if pts:
            ax.plot(*zip(*pts), marker=".")
        else:
            ax.text(0.5, 0.5, "no privacy loss recorded\n(non-private run)", ha="center", transform=ax.transAxes)
        ax.set_xlabel("step")
        ax.set_ylabel("epsilon spent")
        ax.set_title(f"delta = {self.privacy['delta']:g}")
        out["epsilon"] = ("epsilon spent vs step", png(fig))

        fig, ax = plt.subplots(figsize=(4, 3))
        for key, label in (("eval_accuracy", "last"), ("eval_accuracy_ema", "EMA")):
            pts = [(h["step"], h[key]) for h in hist if h.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("eval accuracy")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        out["accuracy"] = ("accuracy vs step", png(fig))

        points = list(zoo_points or [])
        acc, _ = self.accuracy()
        if self.privacy["epsilon"] is not None and not any(pt.get("name") == self.name for pt in points):
            points.append({"name": self.name, "epsilon": self.privacy["epsilon"], "accuracy": acc,
                           "source": "measured"})
        fig, ax = plt.subplots(figsize=(4, 3))
        for source, marker in (("measured", "o"), ("paper", "s")):
            pts = sorted((pt["epsilon"], pt["accuracy"]) for pt in points
                         if pt.get("source", "measured") == source and pt["epsilon"] is not None
                         and pt["accuracy"] is not None)
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=f"{source}")
        for pt in points:
            if pt["epsilon"] is None and pt["accuracy"] is not None:
                ax.axhline(pt["accuracy"], color="gray", ls="--", label=f"non-private ({pt['name']})")
        if self.privacy["epsilon"] is not None:
            ax.plot([self.privacy["epsilon"]], [acc], "r*", ms=12, label="this model")
        else:  # a baseline has no epsilon: a line, not a point at epsilon 0
            ax.axhline(acc, color="r", ls=":", label="this model (non-private)")
        ax.set_xlabel("epsilon")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7)
        out["zoo"] = ("privacy-utility curve of the zoo", png(fig))
        return out

    def to_html(self, zoo_points=None, plots=None):
        """card.html: a standalone page (plots embedded as PNG data URIs)."""
        j = self.to_json()
        plots = plots if plots is not None else self.plots(zoo_points)
        body = self.to_markdown().split("\n---\n", 1)[-1]
        figs = "".join(
            f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,'
            f'{base64.b64encode(data).decode()}"><figcaption>{html.escape(title)}</figcaption></figure>'
            for title, data in plots.values()
        )
        warn = " warn" if (self.is_simulation or not self.privacy["private"]) else ""
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.name)}: dp_zoo model card</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
            "pre{background:#f4f4f4;padding:1em;white-space:pre-wrap}"
            ".headline{font-size:1.2em;font-weight:bold;padding:.5em;border-left:6px solid #393}"
            ".headline.warn{border-left-color:#c33;background:#fee}"
            "figure{display:inline-block;margin:1em}</style></head><body>"
            f"<p class='headline{warn}'>{html.escape(j['headline'])}</p>"
            f"<h1>{html.escape(self.name)}</h1>{figs}"
            f"<pre>{html.escape(body)}</pre></body></html>"
        )

    def write(self, directory, zoo_points=None):
        """Writes card.json, README.md, card.html and plots/*.png into ``directory``.

        Returns:
          list of the relative paths written.
        """
        plots = self.plots(zoo_points)
        os.makedirs(os.path.join(directory, "plots"), exist_ok=True)
        written = []
        for key, (_, data) in plots.items():
            with open(os.path.join(directory, PLOT_FILES[key]), "wb") as f:
                f.write(data)
            written.append(PLOT_FILES[key])
        with open(os.path.join(directory, "card.json"), "w") as f:
            json.dump(self.to_json(), f, indent=2)
        with open(os.path.join(directory, "README.md"), "w") as f:
            f.write(self.to_markdown())
        with open(os.path.join(directory, "card.html"), "w") as f:
            f.write(self.to_html(plots=plots))
        return written + ["card.json", "README.md", "card.html"]
