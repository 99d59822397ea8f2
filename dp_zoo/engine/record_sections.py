"""The engine's sections of the run record (docs/design.md, "The run record").

``Trainer.record()`` returns what ``engine_sections`` builds: the sections
only the engine knows (config, privacy, history, model, software, hardware,
operational, step counts). ``run_record.complete`` adds the training
command's; this module sits below ``run_record`` and must not import it.
"""

import os
import platform

import keras
import tensorflow as tf

from dp_zoo import accounting

RANDOMNESS_SECRET = ("secret: Poisson sampling (PCG64) and Philox stateless Gaussian noise keyed by a "
                     "256-bit secret from OS entropy, kept only in the run directory")
RANDOMNESS_REPRODUCIBLE = "reproducible: sampling and noise derived from the public seed"
REPRODUCIBLE_DETAIL = ("batch selection and noise were derived from the public seed {seed}, so anyone can "
                       "recompute them; DP-SGD ran, but the model has no privacy guarantee")
NOISELESS_DETAIL = ("trained with DP-SGD's sampling and clipping but no noise (add_noise=False, the "
                    "privacy audit's power check); the model has no privacy guarantee")
OPERATIONAL_NOTE = ("operational, not covered by the privacy guarantee: wall-clock totals grow with the "
                    "realised Poisson batch sizes")


PRIVATE_TIMING_NOTE = ("not published: a private run's wall time grows with its secret Poisson batch sizes "
                       "(docs/privacy.md, 'What a run publishes'); the run directory's checkpoints keep it")


def operational(wall_time_s, *, private):
    """The run record's "operational" section: the wall-clock total of a run without a privacy
    guarantee; for a private run none (it depends on the secret batch sizes, which only the
    noisy updates may reveal)."""
    if private:
        return {"wall_time_s": None, "note": PRIVATE_TIMING_NOTE}
    return {"wall_time_s": round(float(wall_time_s), 3), "note": OPERATIONAL_NOTE}


def mark_not_private(privacy, reason, detail):
    """Turns a privacy section into a NOT-private one, keeping the accountant's figures as nominal.

    The epsilons the accountant computed for the configuration move to
    ``nominal_epsilon`` (what the configuration would give had the run been
    private); ``epsilon`` becomes None, so nothing reads them as a guarantee.
    """
    nominal = {k: privacy.get("epsilon_" + k) for k in ("pld", "rdp")}
    if any(v is not None for v in nominal.values()):
        privacy["nominal_epsilon"] = nominal
    privacy.update(private=False, epsilon=None, epsilon_pld=None, epsilon_rdp=None,
                   not_private={"reason": reason, "detail": detail})
    return privacy


def engine_sections(*, config, ledger, model, train, strategy, history, wall_time_s, steps_planned,
                    steps_completed, nonfinite_steps, add_noise=True, tan_simulation=None, trained=None):
    """The run record without "data"/"metrics" (the CLI adds those); ``Trainer.record()`` returns it.

    Args:
      config: the run's ``TrainConfig``.
      ledger: its ``accounting.PrivacyLedger``.
      model: the trained Keras model (for its parameter count).
      train: the training ``Dataset`` (input shape, class count).
      strategy: the ``tf.distribute`` strategy (replica count).
      history, wall_time_s, steps_planned, steps_completed, nonfinite_steps:
        the trainer's counters.
      add_noise: False for the audit's noiseless run (marked not private).
      tan_simulation: ``dp_zoo.engine.tan.tan_info``'s dict, or None.
      trained: ``trainable.apply``'s summary of the trained variables.
    """
    private = bool(config.dp.enabled)
    tan = tan_simulation if config.tan_simulation_factor else None
    privacy = ledger.summary(tan_simulation=tan)
    privacy["l2_clip"] = float(config.dp.l2_clip) if private else None
    # Decided on the noisy update alone (post-processing): covered by the guarantee.
    privacy["nonfinite_steps_skipped"] = nonfinite_steps
    privacy["randomness"] = None if not private else (
        RANDOMNESS_REPRODUCIBLE if config.deterministic else RANDOMNESS_SECRET)
    if private and not add_noise:
        mark_not_private(privacy, "noise disabled", NOISELESS_DETAIL)
    elif private and config.deterministic:
        mark_not_private(privacy, "reproducible run", REPRODUCIBLE_DETAIL.format(seed=config.seed))
    from dp_zoo import __version__ as dp_zoo_version

    devices = [d.name for d in tf.config.list_logical_devices()]
    return {
        "schema_version": 1,
        "config": config.to_dict(),
        "privacy": privacy,
        "history": list(history),
        "model": {
            "architecture": config.model,
            "num_params": int(model.count_params()),
            "input_shape": list(train.input_shape),
            "num_classes": int(train.num_classes),
            "init_checkpoint": config.init_checkpoint,
            "trained": trained,
        },
        "software": {
            "dp_zoo": dp_zoo_version,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "dp_accounting": accounting.dp_accounting_version(),
            "python": platform.python_version(),
        },
        "hardware": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "devices": devices,
            "num_replicas": int(strategy.num_replicas_in_sync),
        },
        "operational": operational(wall_time_s, private=bool(privacy["private"])),
        "steps_planned": steps_planned,
        "steps_completed": steps_completed,
    }
