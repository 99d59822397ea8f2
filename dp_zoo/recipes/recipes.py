"""Named training recipes: publications' configurations, dp_zoo's own, and the digits ones.

Each recipe is a ``TrainConfig`` plus where it comes from, and is also the
zoo entry of the same name: ``dp_zoo.zoo`` takes the entry's architecture,
data set, privacy budget and published figure from it. Run one with::

    python -m dp_zoo.train --recipe NAME

Three kinds of recipe:

- **A publication's configuration** (``recipe.source`` set): every setting
  (model, data, B, steps, sigma, C, delta, K, learning rate, momentum, EMA,
  weight decay) comes from ``recipe_sources.PUBLISHED``, which cites where
  each number was read: ``wrn16_4_cifar10_eps1``, ``nf_resnet50_imagenet_eps8``
  and ``wrn28_10_cifar100_finetune_eps1`` (De et al. 2022, jax_privacy's
  configs), ``wrn16_4_cifar10_eps8`` and ``nf_resnet50_imagenet_tan_eps8``
  (TAN's reference runs). sigma is the source's, never recalibrated; where
  dp_zoo's accountant gives another epsilon than the source states,
  ``epsilons`` says so.
- **Partly a publication's, unverified** (``recipe.unverified`` set): the
  CIFAR-10 recipes at eps=2, 4, 8 of WRN-16-4 and WRN-40-4 (WRN-16-4 eps=8
  is TAN's reference run, above), built on ``recipe_sources.UNVERIFIED``:
  De et al. 2022's sigma for each eps as remembered from the paper's
  appendix, not read here. eps=2 (sigma 6, 1,125 steps: RDP eps 2.000) is
  almost certainly the paper's configuration; at eps=4 and 8 the paper's
  sigma (4, 3) runs for the most steps the budget allows, computed with
  dp_zoo's accountant (1,689 and 3,066). The paper's method: sigma stays
  large and the budget buys steps. No published accuracy is shown.
- **dp_zoo's own choice** (``recipe.source`` and ``recipe.unverified`` None):
  every other recipe, e.g. WRN-40-4 at eps=1 (jax_privacy's eps=1
  configuration), the fine-tuning recipes (B and steps of jax_privacy's
  CIFAR-100 config, or dp_zoo's 1000 steps for NFNet-F3), MNIST and digits.
  No paper ran them, so they show no published accuracy. Their sigma is
  calibrated with dp_zoo's accountant, rounded up to 4 decimals (epsilon
  never exceeds the target); ``tests/train/test_recipes.py`` recomputes each.
"""

import warnings

from dp_zoo.recipes import builders
from dp_zoo.recipes.builders import DIGITS_N, MNIST_N  # noqa: F401  (the training splits' sizes: API)
from dp_zoo.recipes.recipe import OWN_CHOICE, PAPER, SIGMA_UNVERIFIED, Recipe  # noqa: F401  (API)

RECIPES = builders.build()


def _table():
    lines = ["", "Recipes (command, then whose configuration it is):", ""]
    for name, r in sorted(RECIPES.items()):
        pub = f", {r.published_accuracy}% top-1 ({r.accuracy_source})" if r.published_accuracy is not None else ""
        init = " --init PATH" if requires_init(r) else ""
        lines.append(f"    {r.command}{init}  -> {r.provenance}{pub}")
        if r.simulation_command:
            lines.append(f"    {r.simulation_command}  -> the source's TAN simulation, NOT private at its eps")
    return "\n".join(lines)


DEFAULT_RECIPE = "wrn_digits_eps8"


def default_recipe_for(model):
    """Deprecated, kept for one release: use ``dp_zoo.models.default_recipe(model)``.

    Name of the recipe ``--model MODEL`` starts from, or None. Each model
    family now registers its default recipe with the architecture registry
    (``dp_zoo/models/_registry.py``), so asking imports ``dp_zoo.models`` and
    with it TensorFlow, which importing this module never does.
    """
    warnings.warn("recipes.default_recipe_for is deprecated: use dp_zoo.models.default_recipe",
                  DeprecationWarning, stacklevel=2)
    from dp_zoo.models import default_recipe

    return default_recipe(model)


def _default_for_model():
    # The old hand-kept table held only the architectures that have a recipe of their own (the
    # others borrowed their family's): the same entries, now read from the registry.
    from dp_zoo.models import _registry

    return {arch: name for arch, name in sorted(_registry.default_recipes().items())
            if name in RECIPES and RECIPES[name].config.model == arch}


def __getattr__(name):
    """``DEFAULT_FOR_MODEL`` (deprecated, kept for one release): built from the registry when first read.

    Built lazily so that importing this module stays free of TensorFlow.
    """
    if name == "DEFAULT_FOR_MODEL":
        warnings.warn("recipes.DEFAULT_FOR_MODEL is deprecated: use dp_zoo.models.default_recipe",
                      DeprecationWarning, stacklevel=2)
        return _default_for_model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def requires_init(recipe):
    """True for recipes that fine-tune weights dp_zoo cannot ship (placeholder init)."""
    init = recipe.config.init_checkpoint
    return bool(init) and init.startswith("<")


def get(name):
    """The recipe called ``name`` (clear error listing close names)."""
    if name not in RECIPES:
        from dp_zoo.models._registry import unknown_name_message

        raise ValueError(unknown_name_message("recipe", name, sorted(RECIPES)))
    return RECIPES[name]


# help(dp_zoo.recipes.recipes) lists every recipe with its command and published result.
__doc__ += _table()
