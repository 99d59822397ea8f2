"""The tuner's named search spaces (issue #26 item 2): every value from a public source, none from
benchmarks/digits_search.py's non-private search on the digits data."""

import pytest

from dp_zoo.commands import tune
from dp_zoo.recipes import sources as recipe_sources, recipes, search_spaces

SPACE = search_spaces.SPACES["digits_public"]
DE = [recipe_sources.PUBLISHED[k] for k in search_spaces.DE2022_CONFIGS]


def test_the_digits_grid_is_de_et_al_s_learning_rates_and_epochs():
    lrs, _ = SPACE.grid["lr"]
    assert set(lrs) == {p.value("learning_rate") for p in DE} == {1.0, 2.0, 4.0}
    steps, _ = SPACE.grid["steps"]
    n_train = recipes.DIGITS_N - 300  # the tuner's training split (--validation-size 300)
    q = SPACE.settings["batch_size"][0] / n_train
    epochs = search_spaces.de2022_epochs("de2022_cifar10_wrn16_4_eps1")
    assert epochs == pytest.approx(875 * 4096 / 50_000)
    assert abs(max(steps) - epochs / q) < 2 and min(steps) == max(steps) // 2


def test_the_base_settings_are_the_cited_ones():
    s = {k: v for k, (v, _) in SPACE.settings.items()}
    assert {p.value("l2_clip") for p in DE} == {s["l2_clip"]}
    assert {p.value("momentum") for p in DE} == {s["momentum"]} and {p.value("weight_decay") for p in DE} == {0.0}
    assert s["ema_decay"] == recipe_sources.PUBLISHED["de2022_cifar10_wrn16_4_eps1"].value("ema_decay")
    assert s["augmult"] == recipe_sources.PUBLISHED["de2022_imagenet_nf_resnet50_eps8"].value("augmult")
    qs = [p.value("batch_size") / p.dataset_size for p in DE]
    assert min(qs) <= s["batch_size"] / (recipes.DIGITS_N - 300) <= max(qs)
    assert all(why for _, why in SPACE.settings.values()) and all(why for _, why in SPACE.grid.values())


def test_applying_the_space_replaces_every_searched_setting_of_the_recipe():
    """The digits recipes' lr 1.0 and 120 steps are digits_search.py's results, and their EMA 0.99
    and unaugmented first view were chosen beside it: none survives into the space's base."""
    recipe = recipes.get("wrn_digits_eps8")
    c = SPACE.apply(recipe.config)
    assert c.ema.decay == 0.999 and c.augmult.augment_first_view and c.augmult.num_views == 4
    assert c.optim.momentum == 0.0 and c.optim.schedule == "constant" and c.dp.l2_clip == 1.0
    grid = tune.parse_grid(SPACE.grid_items())
    assert len(grid) == 6 and {p["steps"] for p in grid} == {160, 320}
    assert {tune.point_config(c, p).optim.learning_rate for p in grid} == {1.0, 2.0, 4.0}


def test_the_source_text_cites_its_publication_and_says_no_run_on_the_data():
    assert "De et al. 2022" in SPACE.source and "no run on this data" in SPACE.source
    assert "digits_search" not in SPACE.source


@pytest.mark.parametrize("name,recipe,match", [
    ("nope", "wrn_digits_eps8", "unknown search space"),
    ("digits_public", "wrn16_4_cifar10_eps1", "is for the recipes"),
])
def test_unknown_or_foreign_spaces_are_refused(name, recipe, match):
    with pytest.raises(ValueError, match=match):
        search_spaces.get(name, recipe)


MNIST = search_spaces.SPACES["mnist_public"]


def test_the_mnist_space_is_tramer_and_boneh_s_settings_and_grid():
    """Every base setting is MNIST_BASE's (Tramer & Boneh 2021, De et al.'s EMA); the grid's learning rates
    are their grid's base rates from half their MNIST choice up, its steps their 40 epochs and half."""
    base = {k: v for k, (v, _) in recipe_sources.MNIST_BASE.items()}
    s = {k: v for k, (v, _) in MNIST.settings.items()}
    for key in ("batch_size", "l2_clip", "delta", "augmult", "ema_decay", "momentum", "weight_decay"):
        assert s[key] == base[key], key
    lrs, _ = MNIST.grid["lr"]
    assert set(lrs) <= set(recipe_sources.MNIST_GRID_SOURCES["base_lrs"][0]) and base["learning_rate"] in lrs
    steps, _ = MNIST.grid["steps"]
    n_train = recipes.MNIST_N - 10_000  # run with --validation-size 10000 (the classic split)
    assert max(steps) == round(40 * n_train / 512) == 3906 and min(steps) == round(20 * n_train / 512)
    assert "--validation-size 10000" in MNIST.source and "no run on this data" in MNIST.source
    assert all(why for _, why in MNIST.settings.values()) and all(why for _, why in MNIST.grid.values())


def test_applying_the_mnist_space_trains_on_unaugmented_images():
    c = MNIST.apply(recipes.get("wrn_mnist_eps1").config)
    assert c.augmult.num_views == 1 and c.augmult.style == "none" and not c.augmult.augment_first_view
    assert c.optim.momentum == 0.9 and c.dp.l2_clip == 0.1 and c.batch_size == 512 and c.model == "wrn_mnist"
    grid = tune.parse_grid(MNIST.grid_items())
    assert len(grid) == 6 and {tune.point_config(c, p).optim.learning_rate for p in grid} == {0.25, 0.5, 1.0}
    with pytest.raises(ValueError, match="is for the recipes"):
        search_spaces.get("mnist_public", "wrn_digits_eps8")
