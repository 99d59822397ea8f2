"""The run record's schema and its one validation (docs/design.md, "The run record").

``check_run_record`` is the validation every card, export and tuned record
goes through; ``RunRecordBuilder.build`` (``record_builder``) calls it too.
It sits in the engine, the lowest layer that writes a record, so that the
builder can check what it builds without an upward import;
``dp_zoo.cards.run_record`` re-exports it under its old name.
"""

import math


# manifest.weights_sha256 of the published model's weights (docs/design.md, "The run record").
# Records written before it existed lack it; the artifacts shipped with them are checked by
# their MANIFEST only.
PUBLISHED_WEIGHTS_SHA256 = "published_weights_sha256"
REQUIRED_SECTIONS = ("config", "privacy", "history", "model", "data", "metrics", "software", "hardware")
REQUIRED_PRIVACY = (
    "private", "epsilon", "delta", "accountant", "noise_multiplier", "sampling",
    "sampling_probability", "dataset_size", "expected_batch_size", "steps", "l2_clip",
    "adjacency", "privacy_unit", "tan_simulation",
)


def check_run_record(record):
    """Refuses a run record that a card cannot be built from.

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
    if p.get("tuning") is not None:
        _check_tuning(record)
    for k in ("test_accuracy_last",):
        if k not in record["metrics"]:
            raise ValueError(f"run record's metrics lack {k!r}.")
    digest = record.get(PUBLISHED_WEIGHTS_SHA256)
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64
                                   and all(c in "0123456789abcdef" for c in digest)):
        raise ValueError(f"run record's {PUBLISHED_WEIGHTS_SHA256} is {digest!r}, not a hex SHA-256.")


TUNING_KEYS = ("method", "trial_distribution", "grid", "runs", "per_trial_epsilon", "total_epsilon", "score",
               "search_space_source")
# Everything a tuned record may say about its tuning: all of it public. The number of trials K
# is secret (the guarantee is for the best trial released with K hidden), so no key may carry
# it or anything that depends on it (a count, a trial index, per-trial or total timings).
TUNING_ALLOWED = TUNING_KEYS + ("number_of_trials", "calibration", "accountant", "selected",
                                "selected_trial_epsilon")
TRIAL_DISTRIBUTION_ALLOWED = ("kind", "mean", "eta", "gamma", "zero_truncated", "expected_trials")


def _check_tuning(record):
    """A tuned record (dp_zoo.tune): its epsilon is the tuning's total, at least one trial's and
    each point's, it says where its grid came from, and it publishes no trial count or timing."""
    p = record["privacy"]
    t = p["tuning"]
    missing = [k for k in TUNING_KEYS if k not in t]
    if missing:
        raise ValueError(f"run record's privacy.tuning lacks {missing}; it must come from dp_zoo.tune.")
    extra = sorted(set(t) - set(TUNING_ALLOWED)) + sorted(
        f"trial_distribution.{k}" for k in set(t["trial_distribution"]) - set(TRIAL_DISTRIBUTION_ALLOWED))
    if extra:
        raise ValueError(f"run record's privacy.tuning carries {extra}: a tuned record publishes no number of "
                         "trials or anything that depends on it (docs/privacy.md, 'Hyper-parameter tuning').")
    if (record.get("operational") or {}).get("wall_time_s") is not None:
        raise ValueError("a tuned run record carries a wall time: a tuning publishes no timing (it can tell "
                         "which trial won, or how many ran).")
    if not str(t["search_space_source"] or "").strip():
        raise ValueError("run record's privacy.tuning.search_space_source is empty: say where the base "
                         "configuration and grid came from.")
    if not p["private"] or p["epsilon"] != t["total_epsilon"]:
        raise ValueError("a tuned run record's epsilon must be the tuning's total_epsilon.")
    if not t["total_epsilon"] >= t["per_trial_epsilon"]:
        raise ValueError("privacy.tuning is inconsistent: the total is below one trial's.")
    if not t["runs"] or any(not r.get("epsilon", math.inf) <= t["per_trial_epsilon"] for r in t["runs"]):
        raise ValueError("privacy.tuning is inconsistent: a grid point's epsilon is missing or above the "
                         "per-trial epsilon the total was computed from.")
