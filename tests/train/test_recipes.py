"""Recipes: names, valid configs, and every sigma re-checked by the accountant."""

import pytest

from dp_zoo import accounting
from dp_zoo.train import recipes

EXPECTED = (
    [f"wrn16_4_cifar10_eps{e}" for e in (1, 2, 4, 8)]
    + [f"wrn40_4_cifar10_eps{e}" for e in (1, 2, 4, 8)]
    + ["wrn16_4_scalenorm_cifar10_eps8", "nf_resnet50_imagenet_eps8"]
    + [f"nfnet_f3_imagenet_finetune_eps{e}" for e in ("0.5", 1, 2, 4, 8)]
    + [f"wrn28_10_cifar10_finetune_eps{e}" for e in (1, 2, 4, 8)]
    + [f"wrn_digits_eps{e}" for e in (1, 2, 4, 8)] + ["wrn_digits_nonprivate"]
)


def test_all_named_recipes_exist():
    assert set(EXPECTED) <= set(recipes.RECIPES)
    assert recipes.DEFAULT_RECIPE in recipes.RECIPES


@pytest.mark.parametrize("name", sorted(n for n in recipes.RECIPES if recipes.RECIPES[n].config.dp.enabled))
def test_sigma_meets_the_target_by_the_accountant(name):
    r = recipes.RECIPES[name]
    c = r.config
    eps = accounting.epsilon(
        noise_multiplier=c.dp.noise_multiplier, sampling_probability=c.batch_size / r.dataset_size,
        steps=c.steps, delta=c.dp.delta, accountant=c.dp.accountant,
    )
    assert eps <= c.dp.target_epsilon * 1.001, (name, eps)
    if r.sigma_source.startswith("calibrated"):
        # Calibrated: tight to the target (within 1%).
        assert eps >= c.dp.target_epsilon * 0.99, (name, eps)


def test_paper_sigma_recipes_reproduce_paper_epsilon():
    r = recipes.get("wrn16_4_cifar10_eps1")
    assert r.config.dp.noise_multiplier == 10.0 and r.config.steps == 875
    r = recipes.get("nf_resnet50_imagenet_eps8")
    c = r.config
    eps = accounting.epsilon(noise_multiplier=2.5, sampling_probability=16384 / 1_271_167,
                             steps=71_589, delta=8e-7, accountant="rdp")
    assert (c.dp.noise_multiplier, c.steps, c.batch_size) == (2.5, 71_589, 16384)
    assert abs(eps - 8.0) / 8.0 < 0.005


def test_unknown_recipe_lists_close_names():
    with pytest.raises(ValueError, match="wrn16_4_cifar10_eps8"):
        recipes.get("wrn16_4_cifar10_eps9")


def test_docstring_commands():
    assert recipes.get("wrn_digits_eps8").command == "python -m dp_zoo.train --recipe wrn_digits_eps8"
