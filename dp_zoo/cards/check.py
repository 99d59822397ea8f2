"""Checking a published card: equal to what its run record gives, and the record's ε the accountant's.

A MANIFEST only says that the files are the ones someone listed; anyone can
write a self-consistent one. So before a card is shown, loaded or served,
``check`` makes sure that

1. the run record is well formed (``run_record.check_run_record``, plus the
   types and ranges of every number the guarantee rests on);
2. ``card.json`` states exactly what the card ``ModelCard.from_run_record``
   builds from that record states: every field it has is equal (the headline,
   the privacy section and the scope compared whole), it has no field the
   builder does not write, and it lacks none of ``REQUIRED`` (a card written
   by an earlier dp_zoo may lack a field added to the builder since, such as
   ``training.precision``); a card cannot state anything its record does not;
3. every ε in the record's privacy section is what dp-accounting computes
   for the record's own (σ, q, steps, δ, prior runs; for a tuned model the
   trials' runs, score noise and trial distribution): a record cannot state
   a guarantee the accountant does not give. The TAN simulation's
   ``epsilon_full_run`` (a hypothetical full-size run, not this model's
   guarantee, which the headline says is absent) is not recomputed.

Cost. The recomputation takes from milliseconds (a PLD ε of a few steps) to
seconds (a tuned total over RDP orders, about 0.3-1.3 s for the shipped
digits models). It is cached by the SHA-256 of the run record (with the
dp-accounting version and ``CACHE_VERSION``): in this process, and on disk
in a directory the caller names (the zoo uses the user's cache directory,
never ``DP_ZOO_HOME`` or an artifact, which may come from someone else), one
small JSON file per record, written atomically. A cached value that disagrees
with the record is recomputed before anything is refused (a damaged cache
never refuses a good model); one that agrees is trusted, so the cache
directory must be writable only by its user.
"""

import contextlib
import json
import logging
import math
import os
import tempfile

from dp_zoo.cards.model_card import ModelCard, record_sha256
from dp_zoo.cards.run_record import check_run_record

CACHE_VERSION = 1
CACHE_SUBDIR = "epsilon_checks"
# Same dp-accounting version: bit-identical floats. The tolerance only absorbs
# last-digit noise; a real disagreement is many orders larger.
REL_TOL = 1e-6
_memory = {}


def _accounting():
    # Imported only to recompute (a cache miss): importing dp-accounting (scipy.signal) takes
    # seconds, and a cached check, or listing the zoo, needs none of it.
    from dp_zoo import accounting

    return accounting


def _dp_accounting_version():
    from importlib import metadata

    try:
        return metadata.version("dp-accounting")
    except metadata.PackageNotFoundError:  # pragma: no cover - installed with dp_zoo
        return _accounting().dp_accounting_version()


def clear_memory_cache():
    """Forgets the recomputations cached in this process (the on-disk cache stays)."""
    _memory.clear()


# -- types ----------------------------------------------------------------------------------------


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_types(p):
    """The privacy section's numbers are numbers, finite and in range (a string "8" is not an ε)."""
    def need(key, ok, what):
        if not ok(p.get(key)):
            raise ValueError(f"privacy.{key} is {p.get(key)!r}; it must be {what}")

    finite = lambda x: _is_number(x) and math.isfinite(x)  # noqa: E731
    need("private", lambda x: isinstance(x, bool), "true or false")
    need("delta", lambda x: finite(x) and 0 < x < 1, "a number in (0, 1)")
    need("steps", lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0, "an integer >= 0")
    need("sampling_probability", lambda x: finite(x) and 0 < x <= 1, "a number in (0, 1]")
    need("noise_multiplier", lambda x: finite(x) and x >= 0, "a number >= 0")
    need("sampling", lambda x: x == "poisson", '"poisson" (the only sampling dp_zoo accounts)')
    for key in ("epsilon", "epsilon_pld", "epsilon_rdp"):
        need(key, lambda x: x is None or (finite(x) and x >= 0), "null or a finite number >= 0")
    if p["private"]:
        # Which accountants exist is checked by the recomputation (dp_zoo.accounting refuses others).
        need("accountant", lambda x: isinstance(x, str) and x, "the accountant's name")
        need("noise_multiplier", lambda x: x > 0, "> 0 for a private run")
        if p.get("epsilon_" + p["accountant"]) != p["epsilon"]:
            raise ValueError(f"privacy.epsilon ({p['epsilon']!r}) is not privacy.epsilon_{p['accountant']} "
                             f"({p.get('epsilon_' + p['accountant'])!r}), the accountant it names")
    if p.get("tuning") is not None:
        # What dp_zoo.tune writes: an RDP total, no PLD figure, no initial checkpoint's runs.
        if p["accountant"] != "rdp" or p.get("epsilon_pld") is not None or p.get("prior_runs"):
            raise ValueError("a tuned record's epsilon is an RDP total (accountant rdp, no epsilon_pld) of "
                             "trials trained from scratch (no prior_runs)")


# -- recomputation --------------------------------------------------------------------------------


def _runs(runs):
    """``((sigma, q, steps), ...)`` of a record's list of run dicts."""
    return tuple((float(r["noise_multiplier"]), float(r["sampling_probability"]), int(r["steps"]))
                 for r in runs or ())


def _dp_sgd(p, accountant):
    """The ε of the record's own run, composed with its prior runs, with ``accountant``."""
    return _accounting().epsilon(noise_multiplier=p["noise_multiplier"],
                                 sampling_probability=p["sampling_probability"], steps=p["steps"],
                                 delta=p["delta"], accountant=accountant, prior_runs=_runs(p.get("prior_runs")))


def _recompute(p):
    """``{"privacy.<field>": ε}`` for every ε the privacy section ``p`` states, from dp-accounting."""
    out = {}
    t = p.get("tuning")
    if p["private"] and t:
        from dp_zoo.accounting import tuning

        runs = _runs(t["runs"])
        dist = tuning.TrialDistribution.from_dict(t["trial_distribution"])
        noise = float(t["score"]["noise_std"])
        total = tuning.total_epsilon(runs, noise, dist, p["delta"])
        out.update({"privacy.epsilon": total, "privacy.epsilon_rdp": total, "privacy.tuning.total_epsilon": total,
                    "privacy.tuning.per_trial_epsilon": tuning.trial_epsilon(runs, noise, p["delta"])})
        for acc, value in (t.get("selected_trial_epsilon") or {}).items():
            if value is not None:
                out[f"privacy.tuning.selected_trial_epsilon.{acc}"] = _dp_sgd(p, acc)
        return out
    if p["private"]:
        if p["accountant"] not in _accounting().ACCOUNTANTS:
            raise ValueError(f"privacy.accountant {p['accountant']!r} is not one of {list(_accounting().ACCOUNTANTS)}")
        for acc in _accounting().ACCOUNTANTS:
            if p.get("epsilon_" + acc) is not None:
                out["privacy.epsilon_" + acc] = _dp_sgd(p, acc)
        out["privacy.epsilon"] = out["privacy.epsilon_" + p["accountant"]]
        return out
    for acc, value in (p.get("nominal_epsilon") or {}).items():
        if value is not None:  # what the run would have spent, shown as such on the card
            out[f"privacy.nominal_epsilon.{acc}"] = _dp_sgd(p, acc)
    return out


@contextlib.contextmanager
def _quiet_absl():
    """dp-accounting logs every RDP order it drops at WARNING; a load should not print them."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _cache_path(cache_dir, key):
    return os.path.join(cache_dir, f"{key}-{_dp_accounting_version()}-v{CACHE_VERSION}.json")


def _read_cache(cache_dir, key):
    if cache_dir is None:
        return None
    try:
        with open(_cache_path(cache_dir, key)) as f:
            d = json.load(f)
        values = d["recomputed"]
        if d.get("record_sha256") == key and all(_is_number(v) for v in values.values()):
            return values
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no entry, or a damaged one: recompute
    return None


def _write_cache(cache_dir, key, values):
    """Atomically (temporary file, then rename); a cache that cannot be written is skipped."""
    if cache_dir is None:
        return
    try:
        os.makedirs(cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=cache_dir)
        with os.fdopen(fd, "w") as f:
            json.dump({"record_sha256": key, "dp_accounting": _dp_accounting_version(),
                       "recomputed": values}, f)
        os.replace(tmp, _cache_path(cache_dir, key))
    except OSError:
        with contextlib.suppress(OSError, UnboundLocalError):
            os.remove(tmp)


def _epsilons(record, cache_dir, fresh):
    """(values, whether they came from a cache); ``fresh`` recomputes and rewrites the cache."""
    key = record_sha256(record)
    values = None if fresh else (_memory.get(key) or _read_cache(cache_dir, key))
    cached = values is not None
    if not cached:
        with _quiet_absl():
            values = _recompute(record["privacy"])
        _write_cache(cache_dir, key, values)
    _memory[key] = values
    return values, cached


def recomputed_epsilons(record, cache_dir=None):
    """``{"privacy.<field>": ε}`` recomputed by dp-accounting for ``record`` (cached, see the module)."""
    return _epsilons(record, cache_dir, fresh=False)[0]


def _disagreement(record, values):
    """The first ``(field, stated, recomputed)`` where the record is not what ``values`` say, or None."""
    for field, want in values.items():
        got = _stated(record, field)
        if not (_is_number(got) and math.isclose(got, want, rel_tol=REL_TOL, abs_tol=1e-12)):
            return field, got, want
    return None


def _stated(record, field):
    x = record
    for k in field.split("."):
        x = x.get(k) if isinstance(x, dict) else None
    return x


# -- the check ------------------------------------------------------------------------------------


# What every card must state, and the sections it must state whole. A card written by an earlier
# dp_zoo may lack a field the builder has gained since (e.g. training.precision); what it states
# must still be exactly what the record gives.
REQUIRED = ("headline", "card_schema_version", "name", "run_record_sha256", "privacy", "scope", "threat_model",
            "data", "model", "metrics")
WHOLE = ("headline", "privacy", "scope")


def _card_differences(card, expected):
    """Dotted names of the fields where ``card`` states something ``expected`` does not (one level into
    sections; a section in ``WHOLE`` is compared whole, a missing ``REQUIRED`` field is a difference)."""
    def canon(x):
        return json.dumps(x, sort_keys=True)

    out = []
    for k in sorted(set(card) | set(expected)):
        if k not in card:
            if k in REQUIRED:
                out.append(k)
            continue
        if k not in expected:
            out.append(k)  # a claim the builder never makes
            continue
        a, b = card[k], expected[k]
        if canon(a) == canon(b):
            continue
        if isinstance(a, dict) and isinstance(b, dict) and k not in WHOLE:
            out += [f"{k}.{s}" for s in sorted(a) if s not in b or canon(a[s]) != canon(b[s])]
        else:
            out.append(k)
    return out


def check(card, record, where, *, cache_dir=None):
    """Refuses a card that is not what its run record gives, or a record whose ε the accountant does not give.

    Args:
      card: the ``card.json`` dict (without the zoo's "artifact" key).
      record: the ``run_record.json`` dict beside it.
      where: the artifact directory (for the messages).
      cache_dir: the on-disk cache of recomputations (None: this process only).

    Returns:
      the recomputed ε, ``{"privacy.<field>": value}``.

    Raises:
      ValueError: one line naming the first disagreement and the fix.
    """
    fix = ("Refusing it; re-download the model, or re-export it from its run record "
           "(python -m dp_zoo.export --model ... --run-record ...).")
    if not isinstance(card, dict) or not isinstance(record, dict) or not isinstance(record.get("privacy"), dict):
        raise ValueError(f"{where}: card.json and run_record.json must be JSON objects with a privacy section. {fix}")
    try:
        check_run_record(record)
        _check_types(record["privacy"])
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{where}/run_record.json is not a valid run record: {e}. {fix}") from None
    name = card.get("name")
    if not isinstance(name, str):
        raise ValueError(f"{where}/card.json has no entry name. {fix}")
    try:
        expected = ModelCard.from_run_record(name, record).to_json()
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{where}: no card can be built from its run_record.json ({e}). {fix}") from None
    diff = _card_differences(card, expected)
    if diff:
        k = diff[0]
        raise ValueError(f"{where}/card.json does not match its run_record.json ({', '.join(diff[:6])}"
                         f"{', ...' if len(diff) > 6 else ''}): the card states {_stated(card, k)!r} for {k}, the "
                         f"record gives {_stated(expected, k)!r}. {fix}")
    try:
        values, cached = _epsilons(record, cache_dir, fresh=False)
        if cached and _disagreement(record, values):
            # Before refusing, recompute: a damaged or stale cache entry must never refuse a good record.
            values, _ = _epsilons(record, cache_dir, fresh=True)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{where}/run_record.json: its privacy section cannot be recomputed ({e}). {fix}") from None
    p = record["privacy"]
    bad = _disagreement(record, values)
    if bad:
        field, got, want = bad
        raise ValueError(
            f"{where}/run_record.json states {field}={got!r}, but the accountant gives {want!r} for its "
            f"sigma={p['noise_multiplier']!r}, q={p['sampling_probability']!r}, steps={p['steps']!r}, "
            f"delta={p['delta']!r}{' and its tuning' if p.get('tuning') else ''} (dp-accounting "
            f"{_dp_accounting_version()}; the record was written with "
            f"{p.get('dp_accounting_version')}). {fix}")
    return values
