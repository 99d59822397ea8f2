"""``python -m dp_zoo.train``: private training, fine-tuning and publishing.

With no arguments it runs the embedded default: a real DP-SGD run on
scikit-learn's digits (recipe ``wrn_digits_eps8``, a few minutes on 2 CPU
cores), prints the test accuracy and the epsilon the accountant computed, and
publishes a loadable model with its card.

Examples::

    python -m dp_zoo.train                                  # embedded default
    python -m dp_zoo.train --recipe wrn16_4_cifar10_eps8    # reproduce a recipe
    python -m dp_zoo.train --model wrn16_4 --epsilon 4 --steps 1000
    python -m dp_zoo.train --recipe wrn16_4_cifar10_eps8 --tan-simulate 16   # TAN's own simulation
    python -m dp_zoo.train --recipe nf_resnet50_imagenet_tan_eps8 --tan-simulate 128
    python -m dp_zoo.train --model nfnet_f3 --init weights.keras
    python -m dp_zoo.train --model wrn_digits --init saved_models/wrn_digits_eps2   # an artifact directory
    python -m dp_zoo.train --model nfnet_f3 --init dm_nfnet_f3.safetensors   # timm weights

A run directory (``--run-dir``) holds checkpoints and the privacy journal;
re-running the same command with the same ``--run-dir`` resumes it. One
training at a time holds a run directory (a second is refused, naming the
first one's PID), and the publish target is checked before the first step.

This module only turns the command line into a recipe's ``TrainConfig`` with
the flags' overrides (``resolve``) and ``run.RunOptions``; ``run.train`` does
the job. The flags are declared in ``train_flags``; the ones that override one
config field are its table ``OVERRIDES``; the ones that change the privacy guarantee (epsilon, delta,
q = B / N, steps) make the recipe's sigma stale, so it is recalibrated unless
``--noise-multiplier`` is given.
"""

import dataclasses
import sys

from dp_zoo import cli
from dp_zoo.commands.train_flags import OVERRIDES, UsageError, in_flag_terms, parser, positive
from dp_zoo.jobs import init_weights
from dp_zoo.jobs import training as run
from dp_zoo.recipes import recipes


EXIT_INTERRUPTED = 130  # the shell's status for a process stopped by Ctrl-C


def _check_combinations(args):
    if args.tpu and args.strategy != "tpu":
        raise UsageError("--tpu names the TPU for --strategy tpu; add --strategy tpu.")
    if args.steps is not None and args.epochs is not None:
        raise UsageError("pass either --steps or --epochs, not both.")
    if args.deterministic_noise is not None:
        raise UsageError("--deterministic-noise was replaced by --deterministic, which seeds batch selection and "
                         "noise from --seed and publishes the run as NOT differentially private.")
    if args.non_private and any(v is not None for v in (args.epsilon, args.noise_multiplier, args.tan_simulate)):
        raise UsageError("--non-private cannot be combined with --epsilon/--noise-multiplier/--tan-simulate.")


def _recipe(args):
    """The recipe the run starts from: --recipe, the --model's default, or the default; with --model, the
    recipe's architecture swapped for it (and the run renamed after it), as python -m dp_zoo.tune does."""
    if not args.model:
        return recipes.get(args.recipe or recipes.DEFAULT_RECIPE)
    model = args.model
    from dp_zoo.models import _registry, default_recipe, list_architectures

    if model not in list_architectures():
        raise UsageError(_registry.unknown_name_message("architecture", model, list_architectures()).replace(
            "Unknown architecture", "--model: unknown architecture"))
    base = args.recipe or default_recipe(model)
    if base is None:
        raise UsageError(
            f"architecture {model!r} has no default recipe; pass --recipe, or --model one of: "
            f"{', '.join(sorted(_registry.default_recipes()))}."
        )
    recipe = recipes.get(base)
    if model != recipe.config.model:
        # e.g. nfnet_f0 starts from the nfnet_f3 recipe: name it after the model run.
        renamed = recipe.name.replace(recipe.config.model, model, 1)
        if renamed == recipe.name:
            renamed = f"{model}_{recipe.name}"
        recipe = dataclasses.replace(recipe, name=renamed, config=recipe.config.replace(model=model))
    return recipe


def _set(config, field, value):
    """``config`` with the (dotted) ``field`` replaced."""
    if "." not in field:
        return config.replace(**{field: value})
    section, name = field.split(".")
    return config.replace(**{section: dataclasses.replace(getattr(config, section), **{name: value})})


def _apply_overrides(config, args):
    """``config`` with the ``OVERRIDES`` flags applied; whether one of them changes the guarantee."""
    stale = False
    for o in OVERRIDES:
        value = getattr(args, o.flag.replace("-", "_"))
        if value is None or value == "" or (o.dp_only and args.non_private):
            continue
        config = _set(config, o.field, o.check(o.flag, value) if o.check else value)
        stale |= o.guarantee
    if args.steps is not None:
        config = config.replace(epochs=None)
    if args.epochs is not None:
        config = config.replace(steps=None)
    return config, stale


def _apply_data(config, args):
    """``config`` with --dataset and --validation-size; whether N changed (which changes q = B / N)."""
    data, stale = config.data, False
    if args.dataset is not None and args.dataset != data.dataset:
        from dp_zoo.data import DATASETS
        from dp_zoo.models._registry import unknown_name_message

        if args.dataset not in DATASETS:
            raise UsageError(unknown_name_message("dataset", args.dataset, list(DATASETS)))
        if args.dataset == "imagenet2012" and data.image_size is None:
            raise UsageError("--dataset imagenet2012 needs a fixed image size, which this recipe does not set; "
                             "use an ImageNet recipe (--recipe nf_resnet50_imagenet_eps8, or --model with an "
                             "NF architecture).")
        data, stale = dataclasses.replace(data, dataset=args.dataset), True
    if args.validation_size is not None:
        if args.validation_size < 0:
            raise UsageError("--validation-size must be >= 0.")
        if args.validation_size != data.validation_size:
            data, stale = dataclasses.replace(data, validation_size=args.validation_size), True
    return config.replace(data=data), stale


def _apply_privacy(config, args, stale):
    """``config.dp`` for --non-private, --epsilon and --noise-multiplier; a ``stale`` sigma is recalibrated."""
    dp = config.dp
    if args.non_private:
        return config.replace(dp=dataclasses.replace(dp, enabled=False, noise_multiplier=None, target_epsilon=None))
    if args.epsilon is not None:
        # A new budget: sigma is recalibrated unless given explicitly.
        dp = dataclasses.replace(dp, target_epsilon=positive("epsilon", args.epsilon), noise_multiplier=None)
    if args.noise_multiplier is not None:
        dp = dataclasses.replace(dp, noise_multiplier=positive("noise-multiplier", args.noise_multiplier))
        if args.epsilon is None:
            dp = dataclasses.replace(dp, target_epsilon=None)
    elif stale and dp.target_epsilon is not None:
        # sigma was calibrated for the recipe's delta, q = B / N and steps.
        dp = dataclasses.replace(dp, noise_multiplier=None)
    return config.replace(dp=dp)


def _from_scratch_hint(model):
    """The from-scratch recipes to suggest for an architecture whose default recipe fine-tunes."""
    family = "imagenet2012" if model.startswith("nf") else "cifar10"
    names = [n for n, r in sorted(recipes.RECIPES.items())
             if r.config.data.dataset == family and not recipes.requires_init(r) and n.endswith("eps8")]
    return ", ".join(f"--recipe {n}" for n in names) or "python -m dp_zoo.train --list-recipes"


def _apply_init(config, args, recipe):
    if args.init:
        return config.replace(**init_weights.init_changes(args.init, config))
    if recipes.requires_init(recipe):
        raise UsageError(
            f"recipe {recipe.name} fine-tunes from {recipe.config.init_checkpoint}, which dp_zoo cannot "
            "ship: pass --init (a .keras model, a zoo model name, a Haiku checkpoint, or for NF models a timm "
            f"state dict, of {config.model}). To train from scratch instead, use a from-scratch recipe: "
            f"{_from_scratch_hint(config.model)}."
        )
    return config


def _apply_trainable(config, args):
    """``config`` with --trainable and --linear-probe (which trains the classifier only)."""
    if args.linear_probe is not None:
        config = config.replace(linear_probe=bool(args.linear_probe))
        if args.linear_probe and args.trainable is None:
            config = config.replace(trainable="head")
    if args.trainable is not None:
        if not args.trainable.strip():
            raise UsageError("--trainable is empty; use 'all', 'head' or a regex of variable paths.")
        config = config.replace(trainable=args.trainable)
    if config.linear_probe and config.trainable != "head":
        raise UsageError(f"--linear-probe trains the classifier only; drop --trainable {config.trainable!r} "
                         "(or pass --trainable head).")
    if config.trainable not in ("all", "head"):
        import re

        try:
            re.compile(config.trainable)
        except re.error as e:
            raise UsageError(f"--trainable {config.trainable!r} is not a valid regular expression ({e}); use "
                             "'all', 'head' or a Python regex such as 'stage4|logits'.") from None
    return config


def _run_name(recipe, config, non_private):
    """The run's (and its published model's) name: the recipe's, after the data it trained on."""
    name, old = recipe.name, recipe.config.data.dataset
    if config.data.dataset != old:
        name = name.replace(old, config.data.dataset, 1) if old in name else f"{name}_{config.data.dataset}"
    if config.linear_probe and not recipe.config.linear_probe:
        name = f"{name}_linear_probe"
    elif config.trainable != recipe.config.trainable and config.trainable != "all":
        name = f"{name}_head" if config.trainable == "head" else f"{name}_partial"
    if non_private:
        name = "wrn_digits_nonprivate" if name.startswith("wrn_digits_eps") else f"{name}_nonprivate"
    return name


def _parser():
    """The command line's parser (``train_flags.parser``)."""
    return parser()


def resolve(args):
    """Resolves a recipe and the parsed flags ``args`` into ``(name, TrainConfig, Recipe)``.

    Raises:
      ValueError: a bad flag or flag combination (``UsageError``), or an
        ``--init`` that does not fit the run (one sentence naming the fix).
    """
    _check_combinations(args)
    recipe = _recipe(args)
    config, stale = _apply_overrides(recipe.config, args)
    config = _apply_init(config, args, recipe)
    config = _apply_trainable(config, args)
    config, data_stale = _apply_data(config, args)
    config = _apply_privacy(config, args, stale or data_stale)
    if config.physical_batch_size > config.batch_size:
        config = config.replace(physical_batch_size=config.batch_size)
    if config.init_checkpoint:
        # A non-private init of the same data is refused before any data loads.
        run.init_provenance(config, allow_nonprivate=args.allow_nonprivate_init)
    return _run_name(recipe, config, args.non_private), config, recipe


def run_options(args):
    """The ``run.RunOptions`` of the parsed flags ``args``."""
    return run.RunOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(run.RunOptions)})


def _list_recipes():
    for n, r in sorted(recipes.RECIPES.items()):
        pub = f" published {r.published_accuracy}%" if r.published_accuracy else ""
        extra = " (needs --init)" if recipes.requires_init(r) else ""
        print(f"{n:40s} {r.config.model:18s} {r.config.data.dataset:13s} {r.provenance_label:8s}{pub}{extra}")


def main(argv=None):
    """Runs ``python -m dp_zoo.train`` with the flags ``argv``; returns the exit status.

    Ctrl-C during training finishes the step in hand, saves a checkpoint and
    exits with 130 after one line saying where it stopped and how to resume.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C outside the step loop (start-up, calibration, evaluation, export) or a second one
        # inside it: the privacy journal already counts every step whose noise was drawn.
        print("\ndp_zoo.train: interrupted; run the same command again to resume from the run directory's last "
              "checkpoint (if there is none, training restarts and the steps already spent stay counted).",
              file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv):
    from absl import logging

    args = parser().parse_args(argv)
    # dp-accounting logs every excluded RDP order at WARNING through absl;
    # the user needs the epsilon, not that noise.
    logging.set_verbosity(logging.ERROR)
    if args.list_recipes:
        _list_recipes()
        return 0
    try:
        name, config, recipe = resolve(args)
    except ValueError as e:
        print(f"dp_zoo.train: error: {in_flag_terms(str(e))}", file=sys.stderr)
        return 2
    from dp_zoo.accounting import BudgetExceededError
    from dp_zoo.data import DataUnavailableError
    from dp_zoo.engine.run_lock import RunDirInUseError
    from dp_zoo.engine.trainer import TrainingError
    from dp_zoo.jobs.publishing import PublishError

    print(f"Preparing {name}: loading TensorFlow, the data and the model...", flush=True)
    try:
        run.train(name, config, recipe, run_options(args))
        # No elapsed time: a private run's duration grows with its secret batch sizes
        # (docs/privacy.md, "What a run publishes"), and this console output is published.
        print("done")
    except (DataUnavailableError, TrainingError, BudgetExceededError, FileExistsError, ValueError, PublishError,
            RunDirInUseError) as e:
        print(f"dp_zoo.train: error: {in_flag_terms(str(e))}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    except run.Interrupted as e:
        print(f"dp_zoo.train: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    cli.quiet_tensorflow()
    sys.exit(main())
