"""The engine's sections of the run record (docs/design.md, "The run record").

``Trainer.record()`` returns what ``engine_sections`` builds: the sections
only the engine knows (config, privacy, history, model, software, hardware,
operational, step counts), written by ``record_builder.RunRecordBuilder``.
The jobs above continue that record with the same builder.
"""

import os
import platform

import keras
import tensorflow as tf

from dp_zoo import accounting
from dp_zoo.engine import record_builder
# The builder's; their old home is here.
from dp_zoo.engine.record_builder import OPERATIONAL_NOTE, PRIVATE_TIMING_NOTE, mark_not_private, operational

__all__ = ["OPERATIONAL_NOTE", "PRIVATE_TIMING_NOTE", "NOISELESS_DETAIL", "RANDOMNESS_REPRODUCIBLE",
           "RANDOMNESS_SECRET", "REPRODUCIBLE_DETAIL", "engine_sections", "mark_not_private", "operational"]

RANDOMNESS_SECRET = ("secret: Poisson sampling (PCG64) and Philox stateless Gaussian noise keyed by a "
                     "256-bit secret from OS entropy, kept only in the run directory")
RANDOMNESS_REPRODUCIBLE = "reproducible: sampling and noise derived from the public seed"
REPRODUCIBLE_DETAIL = ("batch selection and noise were derived from the public seed {seed}, so anyone can "
                       "recompute them; DP-SGD ran, but the model has no privacy guarantee")
NOISELESS_DETAIL = ("trained with DP-SGD's sampling and clipping but no noise (add_noise=False, the "
                    "privacy audit's power check); the model has no privacy guarantee")


def engine_sections(*, config, ledger, model, train, strategy, history, wall_time_s, steps_planned,
                    steps_completed, nonfinite_steps, add_noise=True, tan_simulation=None, trained=None,
                    clipping=None, final_l2_clip=None):
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
      clipping: the run's ``dp_zoo.dp.Clipping`` (its plan's); stated as
        ``privacy.clipping``, and ``privacy.l2_clip`` is its sensitivity (C
        for flat clipping, 1 for automatic, the first step's C for adaptive).
      final_l2_clip: adaptive clipping's last C_t (post-processing of the
        noisy counts), stated in ``privacy.clipping``.
    """
    private = bool(config.dp.enabled)
    tan = tan_simulation if config.tan_simulation_factor else None
    privacy = {
        **ledger.summary(tan_simulation=tan),
        "l2_clip": (float(config.dp.l2_clip) if clipping is None else clipping.sensitivity) if private else None,
        # Decided on the noisy update alone (post-processing): covered by the guarantee.
        "nonfinite_steps_skipped": nonfinite_steps,
        "randomness": None if not private else (
            RANDOMNESS_REPRODUCIBLE if config.deterministic else RANDOMNESS_SECRET),
    }
    if clipping is not None:
        privacy["clipping"] = clipping.describe(ledger.noise_multiplier, final_l2_clip) if private else None
    not_private = None
    if private and not add_noise:
        not_private = ("noise disabled", NOISELESS_DETAIL)
    elif private and config.deterministic:
        not_private = ("reproducible run", REPRODUCIBLE_DETAIL.format(seed=config.seed))
    from dp_zoo import __version__ as dp_zoo_version

    devices = [d.name for d in tf.config.list_logical_devices()]
    return record_builder.RunRecordBuilder().set_engine(
        config=config.to_dict(),
        privacy=privacy,
        history=history,
        model={
            "architecture": config.model,
            "num_params": int(model.count_params()),
            "input_shape": list(train.input_shape),
            "num_classes": int(train.num_classes),
            "init_checkpoint": config.init_checkpoint,
            "trained": trained,
        },
        software={
            "dp_zoo": dp_zoo_version,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "dp_accounting": accounting.dp_accounting_version(),
            "python": platform.python_version(),
        },
        hardware={
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "devices": devices,
            "num_replicas": int(strategy.num_replicas_in_sync),
        },
        wall_time_s=wall_time_s, steps_planned=steps_planned, steps_completed=steps_completed,
        not_private=not_private,
    ).build(check=False)
