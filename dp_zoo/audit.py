"""Empirical privacy audit with one training run (Steinke, Nasr, Jagielski 2023).

"Privacy Auditing with One (1) Training Run" (NeurIPS 2023, arXiv 2305.08846):
insert m canaries into the training set, each independently with probability
1/2; train ONCE with the real engine; score every canary on the trained
model; guess "included" for the k best-scoring canaries and "excluded" for
the k worst (abstaining on the rest); and turn the number v of correct
guesses among the r = 2k made into a lower bound on epsilon that holds with
probability >= 1 - beta (the confidence). Their analysis (the canaries'
independent inclusion plus the connection between DP and generalization)
makes one run enough, without paying for group privacy.

The bound (their §5 and Appendix D; implemented here from the statement).
If the training algorithm is (eps, delta)-DP, the number W of correct guesses
satisfies, with B ~ Binomial(r, e^eps / (1 + e^eps)),

    P[W >= v] <= P[B >= v] + 2 m delta * max_{1 <= i <= v} P[v - i <= B < v] / i.

The right side is a p-value for the hypothesis "the algorithm is
(eps, delta)-DP". Every eps whose p-value is <= beta is rejected; the
reported lower bound is the smallest eps that is NOT rejected, so every
eps below it is rejected at level beta (``epsilon_lower_bound``).

Canaries (why these). Black-box input-space canaries: images of uniform
random noise (nothing like a digit) with uniformly random labels, scored
by the log-probability the trained model gives the canary's label.
- They go through the unmodified engine as ordinary training examples
  (sampling, clipping, noise, averaging all exactly as in a real run), so
  the audit tests the real code path, not a model of it.
- They are out of distribution: the real data teaches the model nothing
  about a noise image's random label, so an EXCLUDED canary's score is
  that of a guess, and only the canary's own inclusion can raise it.
  (Mislabelled real digits would instead fight the real data.)
- Gradient ("white-box Dirac") canaries would be stronger but need a hook
  inside the engine's per-example gradients; input-space canaries need none.
- Measured on digits with a tiny WRN (``audit_small`` preset, 200 canaries,
  300 steps): with the noise turned off every one of the 100 guesses is
  right; with DP at eps=2 the guesses are near chance.

The number of guesses k (per side) is fixed before training
(``guess_fraction`` of m); choosing it after looking at the scores would
void the confidence statement. The default fraction (1/4 per side) was
chosen on development runs with other seeds than the tests use.

Deliberately non-private engine (``noise=False``): the real engine with
the noise standard deviation forced to 0 and everything else (Poisson
sampling, per-example clipping, division by the expected batch size) kept.
It exists only to show that the audit has power; its result says
"noise disabled: NOT private" and carries no accountant epsilon.

Caveat on the accountant. The engine sets q = B / N with N the training
set size, so q moves slightly with the number of included canaries (by
well under 1% for the presets); the accountant's epsilon is the one for
the run's actual q.
"""

import dataclasses
import json
import math
import sys
import time
from typing import Optional

import numpy as np

from dp_zoo import cli

METHOD = "Steinke, Nasr, Jagielski 2023 (one training run), black-box input-space canaries"
CANARY_KIND = "uniform-noise images with uniformly random labels"
SCORE_KIND = "log-probability of the canary's label under the trained model"
NOT_PRIVATE_BANNER = "noise disabled: NOT private"


# --- statistics --------------------------------------------------------------


def _check_counts(m, r, v):
    for name, x in (("m", m), ("r", r), ("v", v)):
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {x!r}.")
    if not v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m (correct <= guesses <= canaries), got m={m}, r={r}, v={v}.")


def _check_delta_conf(delta, confidence):
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and 0 <= delta < 1):
        raise ValueError(f"delta must be in [0, 1), got {delta!r}.")
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r} (e.g. 0.95).")


def _log_choose(n):
    """log C(n, k) for k = 0..n (lgamma keeps large n exact enough and finite)."""
    lg = np.array([math.lgamma(k + 1) for k in range(n + 1)])
    return lg[n] - lg - lg[::-1]


def _p_values(m, r, v, eps, delta):
    """The p-value (module docstring) for each eps in the 1-D array ``eps``."""
    eps = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    if v == 0:
        return np.ones_like(eps)  # W >= 0 always: nothing can be rejected
    log_c = _log_choose(r)
    k = np.arange(r + 1)
    out = np.empty_like(eps)
    # Chunks keep the [len(eps), r + 1] matrix small for large r.
    chunk = max(1, 2_000_000 // (r + 1))
    for s in range(0, len(eps), chunk):
        e = eps[s:s + chunk, None]
        # log q and log(1 - q) for q = e^eps / (1 + e^eps), without overflow.
        log_q = -np.logaddexp(0.0, -e)
        log_1mq = log_q - e
        pmf = np.exp(log_c + k * log_q + (r - k) * log_1mq)
        tail = pmf[:, v:].sum(axis=1)
        if delta > 0:
            # window[i-1] = P[v - i <= B < v], i = 1..v
            window = np.cumsum(pmf[:, v - 1::-1], axis=1)
            alpha = np.max(window / np.arange(1, v + 1), axis=1)
            tail = tail + 2.0 * m * delta * alpha
        out[s:s + chunk] = np.minimum(tail, 1.0)
    return out


def p_value(m, r, v, epsilon, delta=0.0):
    """P-value of "the algorithm is (epsilon, delta)-DP" after v of r guesses were right.

    Args:
      m: number of canaries (each included with probability 1/2).
      r: number of guesses made (the others abstained).
      v: number of correct guesses.
      epsilon: the hypothesised epsilon (>= 0).
      delta: the hypothesised delta.

    Returns:
      An upper bound on P[W >= v] under the hypothesis (capped at 1).
    """
    _check_counts(m, r, v)
    _check_delta_conf(delta, 0.5)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon!r}.")
    return float(_p_values(m, r, v, [epsilon], delta)[0])


def epsilon_lower_bound(m, r, v, *, delta=0.0, confidence=0.95, tol=1e-6):
    """Lower bound on epsilon that holds with probability >= ``confidence``.

    The smallest eps whose p-value exceeds beta = 1 - confidence. The
    p-value is not proven monotone in eps when delta > 0 (its delta term
    can shrink as eps grows), so the first crossing is found by a grid scan
    and then refined by bisection, never by a bisection over the whole
    range (which could land on a later crossing and overstate the bound).

    Args:
      m, r, v: canaries, guesses, correct guesses.
      delta: the delta the (eps, delta) statement is about (the run's).
      confidence: 1 - beta.
      tol: precision of the bisection (the result is rounded DOWN to it).

    Returns:
      float >= 0 (0 when not even eps = 0 can be rejected).
    """
    _check_counts(m, r, v)
    _check_delta_conf(delta, confidence)
    beta = 1.0 - confidence
    if _p_values(m, r, v, [0.0], delta)[0] > beta:
        return 0.0
    # Above eps_hi the binomial tail alone exceeds beta (it grows with eps),
    # so the first crossing lies in [0, eps_hi].
    hi = 1.0
    while _p_values(m, r, v, [hi], 0.0)[0] <= beta:
        hi *= 2.0
        if hi > 1e4:  # cannot happen for v <= r; a guard against a silent hang
            raise RuntimeError("epsilon_lower_bound: no crossing below 1e4")
    grid = np.linspace(0.0, hi, 4001)
    p = _p_values(m, r, v, grid, delta)
    j = int(np.argmax(p > beta))
    if p[j] <= beta:  # only possible if the tail bracket above was wrong
        raise RuntimeError("epsilon_lower_bound: bracket without crossing")
    lo, hi = float(grid[j - 1]), float(grid[j])
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if _p_values(m, r, v, [mid], delta)[0] <= beta:
            lo = mid
        else:
            hi = mid
    return lo


# --- canaries, guesses -------------------------------------------------------


def make_canaries(m, image_shape, num_classes, seed):
    """m uniform-noise uint8 images with uniformly random labels, and the inclusion coins.

    Args:
      m: number of canaries.
      image_shape: ``(H, W, C)``.
      num_classes: labels are drawn from ``range(num_classes)``.
      seed: int; the images/labels and the coins come from separate streams.

    Returns:
      ``(images uint8 [m, H, W, C], labels int64 [m], included bool [m])``
      where each ``included[i]`` is an independent fair coin.
    """
    if m < 2:
        raise ValueError(f"need at least 2 canaries, got {m}.")
    canary_rng, coin_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    images = canary_rng.integers(0, 256, size=(m,) + tuple(image_shape), dtype=np.uint8)
    labels = canary_rng.integers(0, num_classes, size=m).astype(np.int64)
    included = coin_rng.random(m) < 0.5
    return images, labels, included


def score_canaries(model, images, labels, mean, std, batch_size=512):
    """Log-probability of each canary's label (higher: more likely trained on)."""
    import tensorflow as tf

    from dp_zoo import preprocessing

    out = []
    for i in range(0, len(labels), batch_size):
        x = preprocessing.normalize(images[i:i + batch_size], mean, std)
        logp = tf.nn.log_softmax(model(x, training=False), axis=-1).numpy()
        out.append(logp[np.arange(len(x)), labels[i:i + batch_size]])
    return np.concatenate(out).astype(np.float64)


def guesses_from_scores(scores, k):
    """+1 ("included") for the k highest scores, -1 for the k lowest, 0 otherwise.

    k is fixed before the scores are seen (see the module docstring).
    """
    scores = np.asarray(scores)
    if not 1 <= 2 * k <= len(scores):
        raise ValueError(f"k={k} guesses per side need 2k <= m={len(scores)} and k >= 1.")
    # Ties broken by index (stable sort): the scores are floats, ties are rare
    # and this choice does not depend on the inclusion coins.
    order = np.argsort(-scores, kind="stable")
    g = np.zeros(len(scores), dtype=np.int64)
    g[order[:k]] = 1
    g[order[len(scores) - k:]] = -1
    return g


def count_correct(guesses, included):
    """``(r, v)``: guesses made and guesses that match the inclusion coins."""
    guesses = np.asarray(guesses)
    truth = np.where(np.asarray(included), 1, -1)
    r = int(np.count_nonzero(guesses))
    v = int(np.sum(guesses == truth))  # abstentions (0) never match
    return r, v


# --- the audit run -----------------------------------------------------------


@dataclasses.dataclass
class AuditResult:
    """What an audit found; ``to_dict()`` is stored in a run record under "audit".

    Attributes:
      epsilon_lower_bound: eps the audit proves, with probability >= confidence.
      confidence: 1 - beta.
      m: canaries; r: guesses made; v: correct guesses.
      delta: the delta of the audited (eps, delta) statement.
      accountant_epsilon: the accountant's epsilon for the audit run (None
        when the noise was disabled: such a run has no epsilon).
      config: the audited ``TrainConfig.to_dict()`` (the audit run's own,
        with its step count and the calibrated sigma's source).
      noise_disabled: True for the deliberately non-private power check.
      configured_epsilon: the target epsilon of the configuration.
      noise_multiplier: sigma the run used (0.0 when noise was disabled).
      recipe: name of the recipe or preset audited.
      num_included: canaries the coins put into training.
      train_size: N of the audit run (real examples + included canaries).
      guesses_per_side: k.
      wall_time_s: training + scoring time.
    """

    epsilon_lower_bound: float
    confidence: float
    m: int
    r: int
    v: int
    delta: float
    accountant_epsilon: Optional[float]
    config: dict
    noise_disabled: bool = False
    configured_epsilon: Optional[float] = None
    noise_multiplier: Optional[float] = None
    recipe: Optional[str] = None
    num_included: Optional[int] = None
    train_size: Optional[int] = None
    guesses_per_side: Optional[int] = None
    wall_time_s: Optional[float] = None

    @property
    def private(self):
        return not self.noise_disabled

    def to_dict(self):
        """JSON-ready dict (the "audit" section of a run record)."""
        d = dataclasses.asdict(self)
        d["private"] = self.private
        d["method"] = METHOD
        d["canaries"] = CANARY_KIND
        d["score"] = SCORE_KIND
        d["status"] = NOT_PRIVATE_BANNER if self.noise_disabled else "private (audited DP-SGD run)"
        return d

    def summary(self):
        """Human-readable lines."""
        lines = []
        if self.noise_disabled:
            lines.append(f"*** {NOT_PRIVATE_BANNER} (deliberately non-private engine: clipping kept, "
                         f"noise std 0; a power check of the audit, not a privacy result) ***")
        lines.append(f"audit of {self.recipe or self.config.get('model')}: {self.m} canaries "
                     f"({self.num_included} included), N={self.train_size}, "
                     f"{self.config.get('steps')} steps, sigma={self.noise_multiplier:.4g}")
        lines.append(f"guesses: {self.r} ({self.guesses_per_side} per side), correct: {self.v}")
        lines.append(f"epsilon lower bound ({self.confidence:.0%} confidence, delta={self.delta:g}): "
                     f"{self.epsilon_lower_bound:.4f}")
        if self.noise_disabled:
            lines.append(f"configured epsilon (NOT achieved, noise disabled): {self.configured_epsilon}")
            lines.append(f"*** {NOT_PRIVATE_BANNER} ***")
        else:
            lines.append(f"accountant epsilon: {self.accountant_epsilon:.4f}")
        return "\n".join(lines)


def run_audit(config, train, *, num_canaries=200, guess_fraction=0.25, confidence=0.95,
              seed=0, noise=True, recipe=None, params="last", progress=False):
    """Audits ``config`` on ``train`` plus canaries, with the real engine.

    Args:
      config: ``TrainConfig`` of the run to audit (DP enabled). Its sigma is
        used if set, else calibrated by the engine from its target epsilon
        for the audit run's own N and steps.
      train: the real training ``Dataset``; its mean/std are kept (the
        canaries do not change the normalisation, which would otherwise
        carry their inclusion outside DP-SGD).
      num_canaries: m.
      guess_fraction: k = round(guess_fraction * m) guesses per side.
      confidence: 1 - beta of the bound.
      seed: canaries and coins (the training seed is ``config.seed``).
      noise: False runs the deliberately non-private engine (power check).
      recipe: name recorded in the result.
      params: which weights are scored: "last", "ema" or "polyak".
      progress: show the engine's progress bar.

    Returns:
      ``AuditResult``.
    """
    import keras

    import dp_zoo
    from dp_zoo.train import data as data_lib
    from dp_zoo.train import engine

    if not config.dp.enabled:
        raise ValueError("the configuration is not private (dp.enabled=False); there is nothing to audit.")
    if not 0 < guess_fraction <= 0.5:
        raise ValueError(f"guess_fraction must be in (0, 0.5], got {guess_fraction}.")
    k = int(round(guess_fraction * num_canaries))
    if k < 1:
        raise ValueError(f"{num_canaries} canaries x guess_fraction {guess_fraction} gives no guesses.")
    images, labels, included = make_canaries(num_canaries, train.input_shape, train.num_classes, seed)
    audit_train = data_lib.Dataset(
        np.concatenate([train.images, images[included]]),
        np.concatenate([train.labels, labels[included]]),
        train.num_classes, train.name,
        f"{train.split} + {int(included.sum())} of {num_canaries} audit canaries",
        tuple(train.mean), tuple(train.std),
    )
    keras.utils.set_random_seed(config.seed)
    model = dp_zoo.create_model(config.model, num_classes=train.num_classes,
                                input_shape=train.input_shape, **dict(config.model_kwargs))
    t0 = time.time()
    # noise=False: the real engine with sigma 0 in the update (Trainer's add_noise), so
    # sampling, per-example clipping and division by the expected batch size are its own.
    trainer = engine.Trainer(model, config, audit_train, augment_fn=data_lib.make_augment_fn(config.augmult),
                             progress=progress, add_noise=noise)
    if not noise and trainer.noise_multiplier != 0.0:
        raise RuntimeError("the non-private engine still has noise; refusing to report a power check")
    trainer.fit()
    scored = trainer.model if params == "last" else trainer.model_for(params)
    scores = score_canaries(scored, images, labels, train.mean, train.std)
    wall = time.time() - t0
    g = guesses_from_scores(scores, k)
    r, v = count_correct(g, included)
    delta = float(config.dp.delta)
    return AuditResult(
        epsilon_lower_bound=epsilon_lower_bound(num_canaries, r, v, delta=delta, confidence=confidence),
        confidence=float(confidence), m=int(num_canaries), r=r, v=v, delta=delta,
        accountant_epsilon=float(trainer.ledger.epsilon()) if noise else None,
        config=config.to_dict(), noise_disabled=not noise,
        configured_epsilon=config.dp.target_epsilon,
        noise_multiplier=float(trainer.noise_multiplier), recipe=recipe,
        num_included=int(included.sum()), train_size=len(audit_train), guesses_per_side=k,
        wall_time_s=round(wall, 3),
    )


# --- configurations ----------------------------------------------------------

# A small audit-sized configuration: tiny WRN on the first 300 digits, many
# epochs (q = 64/400, 300 steps ~ 48 epochs) so that a canary, if included,
# has a real chance to be memorised; sigma is calibrated for the target eps.
AUDIT_SMALL = "audit_small"
AUDIT_SMALL_TRAIN_SIZE = 300


def audit_small_config(epsilon=2.0, steps=300, seed=0):
    """The ``audit_small`` preset (about 45 s on 2 CPU cores)."""
    from dp_zoo.train import config as C

    return C.TrainConfig(
        model="wrn_test", batch_size=64, physical_batch_size=64, steps=steps, seed=seed,
        # The auditor never reads the noise seed; fixing it makes the audit reproducible.
        deterministic=True, eval_every=0, checkpoint_every=10**9,
        dp=C.DPConfig(l2_clip=1.0, noise_multiplier=None, target_epsilon=float(epsilon), delta=1e-5,
                      accountant="pld"),
        augmult=C.AugmultConfig(num_views=1, style="none"),
        ema=C.EMAConfig(decay=None),
        optim=C.OptimConfig(name="sgd", learning_rate=2.0),
        data=C.DataConfig(dataset="digits"),
    )


def resolve_config(recipe_name, *, steps=None, epsilon=None, seed=None):
    """``(TrainConfig, train_size or None)`` for a recipe name or the ``audit_small`` preset.

    For a recipe, sigma is recalibrated (``noise_multiplier=None``) for the
    audit run's own N (real + canaries) and steps whenever the recipe's
    target epsilon is known, so that the audit run spends that epsilon.
    """
    from dp_zoo.train import recipes

    if recipe_name == AUDIT_SMALL:
        cfg = audit_small_config(epsilon=2.0 if epsilon is None else epsilon,
                                 steps=300 if steps is None else steps)
        n = AUDIT_SMALL_TRAIN_SIZE
    else:
        recipe = recipes.get(recipe_name)
        cfg = recipe.config
        if not cfg.dp.enabled:
            raise ValueError(f"recipe {recipe_name!r} is not private; there is nothing to audit.")
        eps = cfg.dp.target_epsilon if epsilon is None else float(epsilon)
        if eps is None:
            raise ValueError(f"recipe {recipe_name!r} has no target epsilon; pass --epsilon.")
        cfg = cfg.replace(dp=dataclasses.replace(cfg.dp, noise_multiplier=None, target_epsilon=eps),
                          checkpoint_every=10**9, eval_every=0)
        if steps is not None:
            cfg = cfg.replace(steps=int(steps), epochs=None)
        n = None
    if seed is not None:
        cfg = cfg.replace(seed=int(seed))
    return cfg, n


def load_train(config, train_size=None):
    """The real training split of ``config`` (first ``train_size`` examples if given)."""
    from dp_zoo.train import data as data_lib

    ds = data_lib.load_dataset(config.data, "train")
    if train_size is not None:
        if not 1 <= train_size <= len(ds):
            raise ValueError(f"train size must be in [1, {len(ds)}], got {train_size}.")
        ds = data_lib.Dataset(ds.images[:train_size], ds.labels[:train_size], ds.num_classes, ds.name,
                              f"first {train_size} of {ds.split}", ds.mean, ds.std)
    return ds


def attach_to_record(result, record_path):
    """Stores ``result.to_dict()`` under "audit" in the run record at ``record_path``.

    Refuses a power-check (noise disabled) result, and a record whose
    configuration is not the audited one apart from what the audit itself
    sets (sigma recalibrated, steps, eval/checkpoint cadence).
    """
    if result.noise_disabled:
        raise ValueError(f"refusing to attach a '{NOT_PRIVATE_BANNER}' audit to a run record.")
    with open(record_path) as f:
        record = json.load(f)
    ignore = ("steps", "epochs", "eval_every", "checkpoint_every")

    def core(c):
        c = {k: v for k, v in c.items() if k not in ignore}
        c["dp"] = {k: v for k, v in c["dp"].items() if k != "noise_multiplier"}
        return c

    if core(record.get("config", {})) != core(result.config):
        raise ValueError(f"{record_path} was not trained with the audited configuration "
                         f"({result.recipe}); audit the recipe that produced it.")
    record["audit"] = result.to_dict()
    tmp = record_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    import os

    os.replace(tmp, record_path)
    return record


# --- CLI ---------------------------------------------------------------------


def _parser():
    p = cli.Parser("dp_zoo.audit",
                   description="Empirical privacy audit of a training configuration with one run "
                               "(Steinke, Nasr, Jagielski 2023).")
    p.option("recipe", default=AUDIT_SMALL,
             help=f"recipe from dp_zoo/train/recipes.py, or {AUDIT_SMALL!r} (default: a tiny "
                  "WRN on 300 digits, 300 steps, eps=2; ~1 min).")
    p.option("canaries", type=int, default=200, help="number of canaries m (default 200).")
    p.option("steps", type=int, default=None, help="training steps (default: the recipe's).")
    p.option("epsilon", type=float, default=None, help="target epsilon (default: the recipe's).")
    p.option("train-size", type=int, default=None,
             help="use only the first N real training examples (default: the recipe's data).")
    p.option("guess-fraction", type=float, default=0.25,
             help="guesses per side as a fraction of m, fixed before training (default 0.25).")
    p.option("confidence", type=float, default=0.95, help="confidence of the bound (default 0.95).")
    p.option("seed", type=int, default=0, help="canary and coin seed (default 0).")
    p.option("params", choices=("last", "ema", "polyak"), default="last", help="weights to score.")
    p.switch("noise", default=True,
             help="--no-noise: a deliberately NON-PRIVATE engine (noise off, clipping kept), to show the "
                  "audit's power.")
    p.switch("json", default=False, help="print the result as JSON.")
    p.option("out", default=None, help="also write the JSON result to this file.")
    p.option("attach-to", default=None,
             help="store the result under 'audit' in this run_record.json (its config must be the recipe's).")
    return p


def _validate_args(a):
    if a.canaries < 2:
        raise ValueError(f"--canaries must be >= 2, got {a.canaries}.")
    if a.steps is not None and a.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {a.steps}.")
    if a.epsilon is not None and not (math.isfinite(a.epsilon) and a.epsilon > 0):
        raise ValueError(f"--epsilon must be > 0, got {a.epsilon}.")
    if not 0 < a.guess_fraction <= 0.5:
        raise ValueError(f"--guess-fraction must be in (0, 0.5], got {a.guess_fraction}.")
    if round(a.guess_fraction * a.canaries) < 1:
        raise ValueError(f"--guess-fraction {a.guess_fraction} of {a.canaries} canaries makes no guesses.")
    if not 0 < a.confidence < 1:
        raise ValueError(f"--confidence must be in (0, 1), got {a.confidence}.")
    if not a.noise and a.attach_to:
        raise ValueError("--no-noise cannot be combined with --attach-to (a non-private run is no audit of a model).")


def main(argv=None):
    """Runs the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        _validate_args(args)
        cfg, n = resolve_config(args.recipe, steps=args.steps, epsilon=args.epsilon)
        if args.train_size is not None:
            n = args.train_size
        train = load_train(cfg, n)
    except ValueError as e:
        print(f"dp_zoo.audit: error: {e}", file=sys.stderr)
        return 2
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # dp-accounting's per-order RDP warnings
    if not args.noise:
        print(f"WARNING: {NOT_PRIVATE_BANNER}. This run trains WITHOUT noise to check that the audit "
              "can detect a non-private engine; its result is not a privacy guarantee.", file=sys.stderr)
    try:
        result = run_audit(cfg, train, num_canaries=args.canaries, guess_fraction=args.guess_fraction,
                           confidence=args.confidence, seed=args.seed, noise=args.noise,
                           recipe=args.recipe, params=args.params,
                           # The engine's bar shows the ledger's epsilon, which a noiseless
                           # run does not have: no bar there, so nothing suggests a guarantee.
                           progress=args.noise and not args.json and sys.stderr.isatty())
        if args.attach_to:
            attach_to_record(result, args.attach_to)
    except (ValueError, OSError) as e:
        print(f"dp_zoo.audit: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    d = result.to_dict()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(d, f, indent=2, sort_keys=True)
    print(json.dumps(d, indent=2, sort_keys=True) if args.json else result.summary())
    return 0


if __name__ == "__main__":
    cli.quiet_tensorflow()
    sys.exit(main())
