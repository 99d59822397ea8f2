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
