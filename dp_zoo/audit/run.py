"""One audit run: canaries added to the real training set, trained once with the real engine.

Also the audit-sized configurations (``audit_small``, a recipe's) and the
"audit" section stored in a run record (``attach_to_record``).
"""

import dataclasses
import json
import time
from typing import Optional

import numpy as np

from dp_zoo.audit.bounds import epsilon_lower_bound
from dp_zoo.audit.canaries import count_correct, guesses_from_scores, make_canaries, score_canaries
from dp_zoo.engine.record_builder import RunRecordBuilder

METHOD = "Steinke, Nasr, Jagielski 2023 (one training run), black-box input-space canaries"
CANARY_KIND = "uniform-noise images with uniformly random labels"
SCORE_KIND = "log-probability of the canary's label under the trained model"
NOT_PRIVATE_BANNER = "noise disabled: NOT private"
PRIVATE_STATUS = "private (audited DP-SGD run)"
REPRODUCIBLE_STATUS = ("audited DP-SGD run, NOT private: a reproducible run (sampling and noise derived from the "
                       "public seed, which the audit's guesses do not use); its accountant epsilon is nominal")


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
    def reproducible(self):
        """True when the audited run derived its sampling and noise from the public seed (deterministic)."""
        return bool(self.config.get("deterministic"))

    @property
    def private(self):
        """dp_zoo's definition (docs/privacy.md): noise on, and randomness from a secret, not the seed."""
        return not self.noise_disabled and not self.reproducible

    def to_dict(self):
        """JSON-ready dict (the "audit" section of a run record)."""
        d = dataclasses.asdict(self)
        d["private"] = self.private
        d["method"] = METHOD
        d["canaries"] = CANARY_KIND
        d["score"] = SCORE_KIND
        d["status"] = (NOT_PRIVATE_BANNER if self.noise_disabled else
                       REPRODUCIBLE_STATUS if self.reproducible else PRIVATE_STATUS)
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
        elif self.reproducible:
            lines.append(f"accountant epsilon (nominal: the run is NOT private, reproducible from its public seed): "
                         f"{self.accountant_epsilon:.4f}")
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

    import dp_zoo.models  # the registry's create_model (dp_zoo.create_model adds the zoo's weights)
    from dp_zoo import data as data_lib
    from dp_zoo.engine import trainer as engine

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
    model = dp_zoo.models.create_model(config.model, num_classes=train.num_classes,
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
    from dp_zoo.recipes import config as C

    return C.TrainConfig(
        model="wrn_test", batch_size=64, physical_batch_size=64, steps=steps, seed=seed,
        # The auditor never reads the noise seed; fixing it makes the audit reproducible,
        # and the audited run NOT private by dp_zoo's definition (the result says so).
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
    from dp_zoo.recipes import recipes

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
    from dp_zoo import data as data_lib

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
    # A newer audit of the same run replaces an earlier one, as before the builder.
    record = RunRecordBuilder.from_record(record).set_audit(result.to_dict(), replace=True).build(check=False)
    tmp = record_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    import os

    os.replace(tmp, record_path)
    return record
