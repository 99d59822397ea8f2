"""One training job, start to finish: data, model, trainer, training, run record, publishing.

``python -m dp_zoo.train`` turns its flags into a ``TrainConfig`` and a
``RunOptions`` and calls ``train``; a program can call it the same way. The
DP semantics of the run are the engine's (docs/design.md); this module wires
the pieces together, evaluates, writes ``run_record.json`` into the run
directory and publishes the model with its card.
"""

import dataclasses
import os
import sys
from typing import Optional

from dp_zoo.jobs import init_privacy, publishing
from dp_zoo.jobs import strategy as strategy_lib
from dp_zoo.jobs.strategy import make_strategy  # noqa: F401  (API: train's strategy, before this split)
from dp_zoo.engine import run_lock
from dp_zoo.jobs.init_weights import load_init_weights

SHA256_NOTE = ("SHA-256 of the split's images (uint8 [N, H, W, C], C order) and labels (int64 little-endian), "
               "recorded only for data public by construction (scikit-learn's embedded digits, dp_zoo's "
               "MNIST copy checked against the standard arrays); null for other sources, where a hash of the "
               "training data would identify it (docs/privacy.md)")


class Interrupted(Exception):
    """Ctrl-C stopped the run after a step, with a checkpoint saved; the message says how to resume."""


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a run is carried out (none of it changes what is trained).

    Attributes:
      run_dir: checkpoints, privacy journal and run record; an existing one is
        resumed. None: ``runs/<name>``.
      publish: export the trained model with its card.
      publish_dir: where to publish. None: a new
        ``$DP_ZOO_HOME/runs/<name>-<date>-<time>`` (else under the zoo cache,
        ``~/.cache/dp_zoo/runs/``), never an entry's own ``<dir>/<name>``,
        which would shadow a published entry.
      overwrite: replace an existing artifact in ``publish_dir`` (never a
        directory that is not a dp_zoo artifact; checked before training).
      strategy: "default", "mirrored", "multiworker" or "tpu".
      tpu: with strategy "tpu", the TPU's name or ``grpc://`` address (None:
        the one the environment names).
      logical_cpus: split the CPU into this many logical devices.
      streaming: stream the data set from its array_record files (None: only
        when it would not fit in memory).
      progress: show a progress bar.
      tan_simulate: run the TAN simulation with batch and sigma divided by
        this factor (``dp_zoo.engine.tan``).
      allow_nonprivate_init: accept an initial checkpoint trained on the same
        data without privacy (the result is published as NOT private).
    """

    run_dir: Optional[str] = None
    publish: bool = True
    publish_dir: Optional[str] = None
    overwrite: bool = False
    strategy: str = "default"
    tpu: Optional[str] = None
    logical_cpus: Optional[int] = None
    streaming: Optional[bool] = None
    progress: bool = True
    tan_simulate: Optional[float] = None
    allow_nonprivate_init: bool = False


def weights_sha256(model):
    """SHA-256 of the model's trainable weights (float32 bytes, in order): the run record's
    ``weights_sha256``, the LAST weights, which every worker must agree on. Not the published
    weights' digest (``published_weights_sha256``, ``manifest.weights_sha256``)."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for v in model.trainable_variables:
        h.update(np.ascontiguousarray(v.numpy()).tobytes())
    return h.hexdigest()


def init_provenance(config, *, allow_nonprivate=False):
    """The ``init_privacy.InitProvenance`` of the run's ``--init`` (None from scratch); refuses a
    non-private one trained on the same data unless ``allow_nonprivate``."""
    prov = init_privacy.provenance(config.init_checkpoint, config.data.dataset)
    init_privacy.check_allowed(prov, allow_nonprivate=allow_nonprivate)
    return prov


def _load_data(config, streaming):
    """(train set, evaluation set, evaluation split name) as the data module serves them."""
    from dp_zoo import data as data_lib

    train_set = data_lib.load_dataset(config.data, "train", streaming=streaming)
    eval_split = "validation" if config.data.validation_size else "test"
    test_set = data_lib.load_dataset(config.data, eval_split, streaming=streaming)
    if getattr(train_set, "streaming", False) and streaming is None:
        print(f"{train_set.name} train does not fit in memory: streaming it from its array_record files.")
    return train_set, test_set, eval_split


def _tan_simulation(name, config, factor, dataset_size):
    """(name, config, tan_info) of the TAN simulation of ``config`` with batch and sigma divided by ``factor``."""
    from dp_zoo.engine import resolve
    from dp_zoo.engine import tan

    # The full run's steps and sigma, resolved once: the simulation keeps the steps and scales sigma.
    plan = resolve.resolve_config(config, dataset_size)
    full = config.replace(steps=plan.steps, dp=dataclasses.replace(config.dp, noise_multiplier=plan.noise_multiplier))
    tan_info = tan.tan_info(full, factor, dataset_size=dataset_size)
    config = tan.simulate(full, factor, dataset_size=dataset_size)
    print(f"TAN SIMULATION (factor {factor:g}): NOT private at the full run's "
          f"epsilon={tan_info['epsilon_full_run']:.4f}; batch {config.batch_size}, "
          f"sigma {config.dp.noise_multiplier:.4f}, {config.steps} steps.")
    return _tan_name(name, factor), config, tan_info


def _tan_name(name, factor):
    return f"{name}_tan{factor:g}"


def _build_model(config, train_set, strategy):
    """The run's model in ``strategy``'s scope, from ``config.init_checkpoint`` when there is one."""
    import keras

    import dp_zoo.models  # the registry's create_model (dp_zoo.create_model adds the zoo's weights)

    with strategy.scope():
        keras.utils.set_random_seed(config.seed)
        model = dp_zoo.models.create_model(
            config.model, num_classes=train_set.num_classes, input_shape=train_set.input_shape,
            **dict(config.model_kwargs),
        )
        if config.init_checkpoint:
            fresh = load_init_weights(config.init_checkpoint, model, config, train_set.input_shape)
            if fresh:
                print(f"Fine-tuning from {config.init_checkpoint}: re-initialised {', '.join(fresh)} "
                      "(shape differs, e.g. another number of classes).")
    return model


def _announce(trainer, config, recipe, train_set, run_dir):
    if trainer.private and config.deterministic:
        print("WARNING: --deterministic derives batch selection and noise from --seed, which is published: "
              "this run is NOT differentially private (its card says so).", file=sys.stderr)
    if recipe.published_accuracy is not None and config == recipe.config:
        print(f"Recipe {recipe.name}: {recipe.accuracy_source} reports {recipe.published_accuracy}% top-1.")
    if trainer.private:
        print(f"Training {config.model} on {train_set.name} (N={len(train_set)}) with DP-SGD: "
              f"sigma={trainer.plan.noise_multiplier:.4f}, q={trainer.q:.4g}, {trainer.total_steps} steps, "
              f"{_clipping_words(trainer.plan)}, delta={config.dp.delta:g}; run dir {run_dir}")
    else:
        print(f"Training {config.model} on {train_set.name} WITHOUT privacy (baseline); run dir {run_dir}")


def _fit(trainer, train_set):
    """``trainer.fit()``; a streamed data set reads the steps' sampled examples ahead of the engine."""
    streaming = getattr(train_set, "streaming", False)
    if streaming:
        trainer.restore()
        train_set.prefetch(trainer.sampler, trainer.step, trainer.total_steps)
    try:
        return trainer.fit()
    finally:
        if streaming:
            train_set.stop_prefetch()


def _check_same_step(trainer, strategy, worker, run_dir):
    """Every worker must resume from the same step, or the collectives pair different steps
    (a hang, or silently wrong updates)."""
    from dp_zoo.engine import trainer as engine

    trainer.restore()
    if not strategy_lib.all_workers_agree(strategy, trainer.step):
        raise engine.TrainingError(
            f"{worker} would resume {run_dir} at step {trainer.step}, another worker at a different "
            "step: the workers do not see the same run directory. Put --run-dir on a file system "
            "shared by all workers (only the chief writes it)."
        )


def _check_same_weights(record, strategy, worker):
    from dp_zoo.engine import trainer as engine

    if not strategy_lib.all_workers_agree(strategy, int(record["weights_sha256"][:16], 16)):
        raise engine.TrainingError(
            f"{worker}: the workers finished with different weights (sha256 {record['weights_sha256']}); "
            "the run is not one DP-SGD run. Check that every worker ran the same command and version."
        )


def _complete_record(builder, trainer, train_set, test_set, eval_split, prov, name, eval_set=None):
    """Adds to the run record of ``builder`` (a ``RunRecordBuilder``) what only the chief knows at the
    end: evaluation (on ``eval_set``, default ``test_set``), data, the init's provenance, names."""
    from dp_zoo.engine import evaluation

    ev = test_set if eval_set is None else eval_set
    metrics = {"test_accuracy_last": trainer.evaluate(ev, "last")["accuracy"],
               "test_accuracy_ema": None, "test_accuracy_polyak": None, "evaluated_on": eval_split}
    if trainer.ema_vars is not None:
        metrics["test_accuracy_ema"] = trainer.evaluate(ev, "ema")["accuracy"]
    if trainer.polyak_vars is not None:
        metrics["test_accuracy_polyak"] = trainer.evaluate(ev, "polyak")["accuracy"]
    data = {
        "dataset": train_set.name, "train_split": train_set.split, "test_split": test_set.split,
        "train_size": len(train_set), "test_size": len(test_set),
        "mean": list(train_set.mean), "std": list(train_set.std),
        "public_pretraining_data": prov.detail if prov is not None and prov.kind in (
            init_privacy.PUBLIC_PRETRAINING, init_privacy.DECLARED_PUBLIC) else None,
        "streaming": bool(getattr(train_set, "streaming", False)),
        # Public arrays only (Dataset.sha256): None for sources that could hold private data.
        "train_sha256": getattr(train_set, "sha256", None), "test_sha256": getattr(test_set, "sha256", None),
        "sha256_note": SHA256_NOTE,
    }
    builder.set_command(metrics=metrics, data=data, init=prov.to_dict() if prov is not None else None,
                        entry_name=name, published_weights=evaluation.published_weights(trainer.ema_vars))
    record = builder.build(check=False)
    if prov is not None and prov.kind in init_privacy.VOID and record["privacy"]["private"]:
        builder.mark_not_private(init_privacy.not_private_reason(prov), init_privacy.not_private_detail(prov))
    return builder


def _report(record, eval_split, worker):
    """Prints the run's accuracy and privacy, as the card will state them."""
    metrics, p = record["metrics"], record["privacy"]
    acc = metrics["test_accuracy_ema"] if metrics["test_accuracy_ema"] is not None else metrics["test_accuracy_last"]
    if worker is not None:
        print(f"{worker} (chief): weights sha256 {record['weights_sha256']}")
    print(f"\n{eval_split} accuracy: {acc:.4f} ({record['published_weights']} weights; "
          f"last weights {metrics['test_accuracy_last']:.4f})")
    if p.get("not_private"):
        nominal = p.get("nominal_epsilon") or {}
        print(f"privacy: NOT differentially private ({p['not_private']['reason']}): {p['not_private']['detail']}; "
              f"nominal epsilon had it been private: PLD {nominal.get('pld')}, RDP {nominal.get('rdp')}")
    elif p["private"]:
        pld = "n/a" if p["epsilon_pld"] is None else f"{p['epsilon_pld']:.4f}"
        print(f"privacy: epsilon={p['epsilon']:.4f} (PLD {pld}, RDP {p['epsilon_rdp']:.4f}), "
              f"delta={p['delta']:g}, {p['steps']} steps, sigma={p['noise_multiplier']:.4f}, q={p['sampling_probability']:.4g}, "
              "Poisson sampling, add-or-remove-one")
        if p.get("tan_simulation"):
            print("TAN SIMULATION: this model is NOT private at the full run's epsilon "
                  f"({p['tan_simulation']['epsilon_full_run']:.4f}).")
    else:
        print("privacy: none (non-private baseline)")


def train(name, config, recipe, options=RunOptions()):
    """Runs the whole job named ``name`` (``config`` derived from ``recipe``); returns the run record.

    Raises:
      run_lock.RunDirInUseError: another training holds the run directory.
      FileExistsError, publishing.PublishError: the publish target is refused
        (before training) or publishing failed (after it; the model is kept).
    """
    # First: MultiWorkerMirroredStrategy and logical CPUs must configure
    # TensorFlow before it runs any op (TFDS loading runs tf.data ops).
    if options.publish:
        publishing.check_publish_dir(options.publish_dir)  # before the run, not after it
    strategy = strategy_lib.make_strategy(options.strategy, tpu=options.tpu, logical_cpus=options.logical_cpus)
    if config.deterministic:
        import tensorflow as tf

        # Bit-identical reruns (and crash replays that reuse a lost step's budget).
        tf.config.experimental.enable_op_determinism()
    final_name = name if options.tan_simulate is None else _tan_name(name, options.tan_simulate)
    run_dir = options.run_dir or os.path.join("runs", final_name)
    lock = None
    if strategy_lib.is_chief(strategy):
        # Before the first step: what would make the publish at the end refuse, and a second
        # training on this run directory (only the chief writes it).
        if options.publish:
            publishing.check_target(*publishing.target(final_name, options))
        lock = run_lock.acquire(run_dir)
    try:
        return _train(name, config, recipe, options, strategy, run_dir)
    finally:
        if lock is not None:
            lock.release()


def _train(name, config, recipe, options, strategy, run_dir):
    """``train`` once the run directory is locked and the publish target checked."""
    from dp_zoo import data as data_lib
    from dp_zoo.engine import checkpoint, record_builder, trainer as engine
    from dp_zoo.publish import manifest

    chief, worker = strategy_lib.is_chief(strategy), strategy_lib.worker_label(strategy)
    train_set, test_set, eval_split = _load_data(config, options.streaming)
    tan_info = None
    if options.tan_simulate is not None:
        name, config, tan_info = _tan_simulation(name, config, options.tan_simulate, len(train_set))
    model = _build_model(config, train_set, strategy)
    prov = init_provenance(config, allow_nonprivate=options.allow_nonprivate_init)
    # Multi-worker runs share one run directory (a shared file system, as with
    # TensorFlow's BackupAndRestore): every worker resumes from the chief's
    # checkpoints and privacy journal, and only the chief writes them.
    augment_fn, probe = data_lib.make_augment_fn(config.augmult), None
    fit_train, fit_eval, fit_model = train_set, test_set, model
    if config.linear_probe:
        # The classifier trains on the frozen backbone's features (cached in run_dir); the
        # full network, with the trained classifier written back, is what is published.
        from dp_zoo.engine import linear_probe

        probe = linear_probe.Probe(model, config, train_set, test_set, augment_fn=augment_fn, run_dir=run_dir,
                                   write=chief, strategy=strategy)
        fit_train, fit_eval, fit_model, augment_fn = probe.train, probe.eval, probe.head, None
    trainer = engine.Trainer(
        fit_model, config, fit_train, write_run_dir=chief,
        eval_data=fit_eval if config.eval_every and chief else None,
        augment_fn=augment_fn, run_dir=run_dir,
        strategy=strategy, progress=options.progress and chief,
        prior_runs=prov.prior_runs if prov is not None else (), tan_simulation=tan_info,
    )
    multiworker = worker is not None and strategy.num_replicas_in_sync > 1
    if multiworker:
        _check_same_step(trainer, strategy, worker, run_dir)
    _announce(trainer, config, recipe, train_set, run_dir)
    record = _fit(trainer, train_set)
    if trainer.stopped_by_signal:
        where = "" if options.run_dir else f" in {os.getcwd()}"
        message = (f"stopped by {trainer.stop_signal} at step {trainer.step} of {trainer.total_steps}; checkpoint "
                   f"saved in {run_dir}. To resume from step {trainer.step}, run the same command again{where}.")
        if trainer.stop_signal == "SIGINT":
            raise Interrupted(message)
        print(f"dp_zoo.train: {message}", file=sys.stderr)
        return record
    builder = record_builder.RunRecordBuilder.from_record(record)  # writes into ``record``
    if probe is not None:
        probe.complete_record(record)
    builder.set_weights(sha256=weights_sha256(fit_model))
    if multiworker:
        _check_same_weights(record, strategy, worker)
    if not chief:
        # The chief evaluates, writes the run record and publishes.
        p = record["privacy"]
        eps = f"epsilon={p['epsilon']:.4f}" if p["private"] else "NOT private"
        print(f"{worker}: finished {record['steps_completed']} steps, {eps}, weights sha256 "
              f"{record['weights_sha256']} (same on all workers); the chief writes {run_dir}.")
        return record
    _complete_record(builder, trainer, train_set, test_set, eval_split, prov, name, eval_set=fit_eval)
    which = record["published_weights"]
    published = probe.published(trainer.weights_for(which)) if probe else trainer.model_for(which)
    # The record binds the weights it publishes; export checks the model it is given against it.
    builder.set_weights(published_sha256=manifest.weights_sha256(published.get_weights()))
    # Unchecked, as before the builder: a finished run keeps its record even if no card can be built
    # from it (the card and the export check it and say why).
    record = builder.build(check=False)
    checkpoint.atomic_write_json(os.path.join(run_dir, "run_record.json"), record)
    _report(record, eval_split, worker)
    if options.publish:
        _publish(published, record, name, options, run_dir)
    return record


def _publish(published, record, name, options, run_dir):
    """Publishes ``published`` (``publishing.publish``; a failure keeps it in ``run_dir``) and says where."""
    publish_dir = publishing.publish(published, record, name, options, run_dir)
    print(f"published: {publish_dir}\n  load it with: dp_zoo.load({publish_dir!r})")


def _clipping_words(plan):
    """The clipping rule in the start line: ``C=1.0`` for flat clipping, else the mode and its sensitivity."""
    clipping = plan.clipping
    if clipping.mode == "flat":
        return f"C={clipping.l2_clip}"
    if clipping.adaptive:
        return (f"adaptive clipping from C={clipping.l2_clip:g} towards the {clipping.target_quantile:g} quantile "
                f"of the norms (count noise {clipping.count_noise:g}; the gradient's sigma "
                f"{plan.update_noise_multiplier:.4f})")
    return f"{clipping.mode} clipping (sensitivity {clipping.sensitivity:g})"
