"""Model cards that record the privacy guarantee, built only from a run record.

A card is ``card.json`` (versioned schema), ``README.md`` (Kaggle Models /
Hugging Face style, YAML metadata header) and ``card.html`` (a page with
plots: epsilon spent vs step, accuracy vs step, and the zoo's privacy-utility
curve). Every number in a card is copied from the run record
(``run_record.json``), whose privacy section the accountant computed: the
card never computes or rounds an epsilon of its own beyond display
formatting, and ``card.json`` keeps full precision.

After Mitchell et al. 2019, "Model Cards for Model Reporting".
"""

import base64
import dataclasses
import html
import io
import json
from typing import Optional

CARD_SCHEMA_VERSION = 1

SCOPE = (
    "The guarantee covers everything the training run released: the final "
    "weights, the EMA/Polyak averages and every intermediate checkpoint "
    "(DP-SGD is private for the whole sequence of iterates). It protects "
    "each single training example (add-or-remove-one adjacency); it does not "
    "protect a person who contributed several examples beyond what group "
    "privacy gives, nor any public pretraining data."
)


@dataclasses.dataclass
class ModelCard:
    """Everything a card states, taken from a run record.

    Attributes:
      name: zoo entry name.
      record: the run record dict (schema in ``engine.Trainer.record`` plus
        the CLI's "data" and "metrics").
      audit: optional empirical audit result dict.
    """

    name: str
    record: dict
    audit: Optional[dict] = None

    @classmethod
    def from_run(cls, name, record, audit=None):
        """Validates and wraps a run record."""
        for key in ("config", "privacy", "model", "software"):
            if key not in record:
                raise ValueError(f"run record lacks the {key!r} section; was it produced by dp_zoo.train?")
        return cls(name=name, record=record, audit=audit or record.get("audit"))

    # -- derived facts (no arithmetic on epsilon) ------------------------------

    @property
    def privacy(self):
        return self.record["privacy"]

    @property
    def is_simulation(self):
        return bool(self.privacy.get("tan_simulation"))

    def headline(self):
        """The first line of every rendering."""
        p = self.privacy
        if self.is_simulation:
            t = p["tan_simulation"]
            return (
                f"TAN SIMULATION — not private at the stated epsilon: this run simulates a "
                f"full-size run with epsilon={t['epsilon_full_run']:.4g}; it is itself only "
                f"(epsilon={p['epsilon']:.4g}, delta={p['delta']:g})-DP."
            )
        if not p["private"]:
            return "NOT PRIVATE: non-private baseline trained without clipping or noise; no privacy guarantee."
        return (
            f"({p['epsilon']:.4g}, {p['delta']:g})-differentially private "
            f"({p['accountant'].upper()} accountant, Poisson sampling, add-or-remove-one, per example)."
        )

    def to_json(self):
        """The ``card.json`` dict."""
        r = self.record
        c = r["config"]
        return {
            "card_schema_version": CARD_SCHEMA_VERSION,
            "name": self.name,
            "headline": self.headline(),
            "privacy": dict(self.privacy),
            "audit": self.audit,
            "training": {
                "l2_clip": self.privacy.get("l2_clip"),
                "logical_batch_size": c["batch_size"],
                "physical_batch_size": c["physical_batch_size"],
                "augmult_k": c["augmult"]["num_views"],
                "augmentation": c["augmult"]["style"],
                "ema_decay": c["ema"]["decay"],
                "optimizer": c["optim"],
                "steps_planned": r.get("steps_planned"),
                "steps_completed": r.get("steps_completed"),
                "seed": c["seed"],
            },
            "data": r.get("data"),
            "model": r["model"],
            "metrics": r.get("metrics"),
            "software": r["software"],
            "hardware": r.get("hardware"),
            "wall_time_s": r.get("wall_time_s"),
            "scope": SCOPE,
            "config": c,
            "history": r.get("history", []),
        }

    # -- renderings --------------------------------------------------------------

    def to_markdown(self):
        """README.md with a YAML metadata header."""
        j = self.to_json()
        p, m, d = j["privacy"], j["metrics"] or {}, j["data"] or {}
        lines = [
            "---",
            "library_name: keras",
            "tags: [differential-privacy, image-classification, dp-sgd, dp_zoo]",
            f"datasets: [{d.get('dataset', 'unknown')}]",
            f"model_name: {self.name}",
            f"private: {str(p['private']).lower()}",
            f"epsilon: {p['epsilon'] if p['epsilon'] is not None else 'null'}",
            f"delta: {p['delta']}",
            f"tan_simulation: {str(self.is_simulation).lower()}",
            "---",
            "",
            f"# {self.name}",
            "",
            f"**{j['headline']}**",
            "",
            "## Privacy guarantee",
            "",
            "| quantity | value |",
            "|---|---|",
        ]
        rows = [
            ("epsilon (reported accountant)", p["epsilon"]),
            ("epsilon (PLD)", p.get("epsilon_pld")),
            ("epsilon (RDP)", p.get("epsilon_rdp")),
            ("delta", p["delta"]),
            ("accountant", f"{p.get('accountant')} (dp-accounting {p.get('dp_accounting_version')})"),
            ("adjacency / privacy unit", f"{p['adjacency']} / one {p['privacy_unit']}"),
            ("sampling", f"{p['sampling']}, q = {p['sampling_probability']}"),
            ("dataset size N", p["dataset_size"]),
            ("expected batch B = qN", p["expected_batch_size"]),
            ("noise multiplier sigma", p["noise_multiplier"]),
            ("clipping norm C", p.get("l2_clip")),
            ("steps", p["steps"]),
        ]
        if self.audit:
            rows.append(("empirical audit: epsilon lower bound",
                         f"{self.audit.get('epsilon_lower_bound')} (confidence {self.audit.get('confidence')})"))
        if self.is_simulation:
            t = p["tan_simulation"]
            rows += [("TAN factor", t["factor"]), ("epsilon of the simulated full run", t["epsilon_full_run"])]
        lines += [f"| {k} | {v} |" for k, v in rows]
        t = j["training"]
        lines += [
            "",
            "## Training",
            "",
            f"- architecture: `{j['model']['architecture']}` ({j['model']['num_params']:,} parameters), "
            f"input {j['model']['input_shape']}, {j['model']['num_classes']} classes",
            f"- logical batch {t['logical_batch_size']}, physical batch {t['physical_batch_size']}, "
            f"augmentation multiplicity K={t['augmult_k']} ({t['augmentation']}), EMA decay {t['ema_decay']}",
            f"- optimizer: {t['optimizer']}",
            f"- steps: {t['steps_completed']} of {t['steps_planned']} planned, seed {t['seed']}",
            f"- data: {d.get('dataset')} — train `{d.get('train_split')}` ({d.get('train_size')} examples), "
            f"test `{d.get('test_split')}` ({d.get('test_size')} examples)",
            f"- public pretraining data: {d.get('public_pretraining_data') or 'none'}; "
            f"initial checkpoint: {j['model'].get('init_checkpoint') or 'none (trained from scratch)'}",
            f"- wall time {j['wall_time_s']} s on {(j['hardware'] or {}).get('platform')} "
            f"({(j['hardware'] or {}).get('num_replicas')} replica(s))",
            f"- software: {j['software']}",
            "",
            "## Results (held-out test split)",
            "",
            f"- test accuracy, last weights: {m.get('test_accuracy_last')}",
            f"- test accuracy, EMA weights: {m.get('test_accuracy_ema')}",
            "",
            "## Scope of the guarantee",
            "",
            SCOPE,
            "",
            "## Use",
            "",
            "```python",
            "import dp_zoo",
            f'model = dp_zoo.load("{self.name}")',
            "```",
            "",
        ]
        return "\n".join(lines)

    def to_html(self, zoo_points=None):
        """card.html: the card with plots embedded as PNG."""
        j = self.to_json()
        md = self.to_markdown().split("---", 2)[-1]
        plots = self._plots(zoo_points)
        imgs = "".join(
            f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b}"><figcaption>{html.escape(t)}</figcaption></figure>'
            for t, b in plots
        )
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.name)} — dp_zoo model card</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
            "pre{background:#f4f4f4;padding:1em;white-space:pre-wrap}.headline{font-size:1.2em;"
            "font-weight:bold;padding:.5em;border-left:4px solid #c33}figure{display:inline-block;margin:1em}</style>"
            f"</head><body><h1>{html.escape(self.name)}</h1>"
            f"<p class='headline'>{html.escape(j['headline'])}</p>{imgs}"
            f"<pre>{html.escape(md)}</pre></body></html>"
        )

    def _plots(self, zoo_points):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = []
        hist = [h for h in self.record.get("history", []) if h.get("step") is not None]

        def png(fig):
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
            plt.close(fig)
            return base64.b64encode(buf.getvalue()).decode()

        eps_pts = [(h["step"], h["epsilon"]) for h in hist if h.get("epsilon") is not None]
        if eps_pts:
            fig, ax = plt.subplots(figsize=(4, 3))
            ax.plot(*zip(*eps_pts), marker=".")
            ax.set_xlabel("step")
            ax.set_ylabel("epsilon spent")
            out.append(("epsilon spent vs step", png(fig)))
        acc_pts = [(h["step"], h["eval_accuracy"]) for h in hist if h.get("eval_accuracy") is not None]
        if acc_pts:
            fig, ax = plt.subplots(figsize=(4, 3))
            ax.plot(*zip(*acc_pts), marker=".", label="last")
            ema = [(h["step"], h["eval_accuracy_ema"]) for h in hist if h.get("eval_accuracy_ema") is not None]
            if ema:
                ax.plot(*zip(*ema), marker=".", label="EMA")
            ax.set_xlabel("step")
            ax.set_ylabel("eval accuracy")
            ax.legend()
            out.append(("accuracy vs step", png(fig)))
        if zoo_points:
            fig, ax = plt.subplots(figsize=(4, 3))
            pts = sorted((e, a) for e, a in zoo_points if e is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label="private entries")
            base = [a for e, a in zoo_points if e is None]
            if base:
                ax.axhline(base[0], color="gray", ls="--", label="non-private")
            ax.set_xlabel("epsilon")
            ax.set_ylabel("test accuracy")
            ax.legend()
            out.append(("zoo privacy-utility curve", png(fig)))
        return out

    def write(self, directory, zoo_points=None):
        """Writes card.json, README.md and card.html into ``directory``."""
        import os

        with open(os.path.join(directory, "card.json"), "w") as f:
            json.dump(self.to_json(), f, indent=2, sort_keys=True)
        with open(os.path.join(directory, "README.md"), "w") as f:
            f.write(self.to_markdown())
        with open(os.path.join(directory, "card.html"), "w") as f:
            f.write(self.to_html(zoo_points))
