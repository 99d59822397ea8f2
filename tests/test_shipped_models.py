"""The digits models shipped in saved_models/: load offline, verified, and their
cards' claims reproduced (accuracy by evaluation, epsilon by the accountant)."""

import numpy as np
import pytest
import tensorflow as tf

import dp_zoo
from dp_zoo import accounting
from dp_zoo import data
from dp_zoo.cards import run_record
from dp_zoo.commands import zoo as zoo_cli
from dp_zoo.preprocessing import normalize
from dp_zoo.publish import manifest
from dp_zoo.publish import zoo
from dp_zoo.recipes import config as C

SHIPPED = ["wrn_digits_eps1", "wrn_digits_eps2", "wrn_digits_eps4", "wrn_digits_eps8", "wrn_digits_nonprivate"]


@pytest.fixture(autouse=True)
def only_repo_artifacts(monkeypatch, tmp_path):
    # Look only at the repository's saved_models/, never a user's cache.
    monkeypatch.delenv("DP_ZOO_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_artifact_is_registered_and_verified(name):
    entry = zoo.entries()[name]
    assert entry["manifest_sha256"], f"{name} has no registered checksum"
    assert (zoo.REPO_SAVED_MODELS / name / "MANIFEST.json").exists()
    size = sum(p.stat().st_size for p in (zoo.REPO_SAVED_MODELS / name).rglob("*") if p.is_file())
    assert size < 5 * 2**20
    model = dp_zoo.load(name)  # verifies every file and the manifest checksum
    assert model.card["artifact"]["registered"] is True
    # Loading checks the weights against the record's published_weights_sha256; a record from before
    # that field (None) is checked by its manifest only.
    digest = model.card["artifact"]["published_weights_sha256"]
    assert digest in (None, manifest.weights_sha256(model.get_weights()))


@pytest.mark.parametrize("name", SHIPPED)
def test_card_accuracy_is_reproduced_on_the_test_split(name):
    model = dp_zoo.load(name)
    card = model.card
    test = data.load_dataset(C.DataConfig(), "test")
    assert card["data"]["test_split"] == test.split
    assert test.images.dtype == np.uint8 and list(test.images.shape[1:]) == card["model"]["input_shape"]
    m = card["metrics"]
    claimed = m["test_accuracy_ema"] if m.get("test_accuracy_ema") is not None else m["test_accuracy_last"]
    # Fed as the card states its input: uint8 images [N, H, W, C], and the same pixels as floats in 0..255.
    for pixels in (test.images, test.images.astype(np.float32)):
        acc = float(np.mean(np.argmax(model.predict(pixels, verbose=0), 1) == test.labels))
        assert abs(acc - claimed) <= 0.005, (acc, claimed)
    # The bare network (what fine-tuning starts from) takes the normalised image.
    network = dp_zoo.load(name, include_preprocessing=False)
    x = normalize(test.images, card["data"]["mean"], card["data"]["std"])
    acc = float(np.mean(np.argmax(network.predict(x, verbose=0), 1) == test.labels))
    assert abs(acc - claimed) <= 0.005, (acc, claimed)
    # Logits, as the docstring says: the SavedModel's "logits" output, not its probabilities.
    served = tf.saved_model.load(str(zoo.REPO_SAVED_MODELS / name / "saved_model" / "1"))
    out = served.signatures["serving_default"](images=tf.constant(test.images[:8]))
    np.testing.assert_allclose(model.predict(test.images[:8], verbose=0), out["logits"].numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in SHIPPED if "nonprivate" not in n])
def test_card_epsilon_is_recomputed_by_the_accountant(name):
    p = dp_zoo.card(name)["privacy"]
    if p.get("tuning"):
        eps = recompute_tuned_epsilon(p)
    else:
        eps = accounting.epsilon(noise_multiplier=p["noise_multiplier"], sampling_probability=p["sampling_probability"],
                                 steps=p["steps"], delta=p["delta"], accountant=p["accountant"])
    assert eps == pytest.approx(p["epsilon"], rel=1e-9)
    assert p["sampling"] == "poisson" and p["randomness"].startswith("secret")
    target = zoo.entries()[name]["target_epsilon"]
    assert eps <= target


def recompute_tuned_epsilon(p):
    """A tuned card's total, from its stated runs, score noise and trial distribution (dp_zoo.tune);
    never below the selected run's own epsilon, which is recomputed too."""
    from dp_zoo.accounting import tuning

    t = p["tuning"]
    runs = tuple((r["noise_multiplier"], r["sampling_probability"], r["steps"]) for r in t["runs"])
    assert (p["noise_multiplier"], p["sampling_probability"], p["steps"]) in runs
    dist = tuning.TrialDistribution.from_dict(t["trial_distribution"])
    total = tuning.total_epsilon(runs, t["score"]["noise_std"], dist, p["delta"])
    own = accounting.epsilon(noise_multiplier=p["noise_multiplier"], sampling_probability=p["sampling_probability"],
                             steps=p["steps"], delta=p["delta"], accountant="rdp")
    assert own == pytest.approx(t["selected_trial_epsilon"]["rdp"], rel=1e-9)
    assert own < t["per_trial_epsilon"] < total
    # issue #26: no tuned card names its number of trials (the guarantee is for K hidden)
    assert set(t) <= set(run_record.TUNING_ALLOWED) and t["search_space_source"]
    return total


def test_nonprivate_baseline_claims_nothing():
    p = dp_zoo.card("wrn_digits_nonprivate")["privacy"]
    assert p["private"] is False and p["epsilon"] is None


def test_zoo_table_shows_each_shipped_models_own_epsilon():
    """The table's RDP/PLD column of a shipped model is its card's (rounded up), not its recipe's untuned
    figures (which put RDP 1.096 beside the eps=1 model)."""
    lines = {ln.split()[0]: ln.split() for ln in zoo_cli.format_models().splitlines() if ln.startswith("wrn_digits")}
    for name in [n for n in SHIPPED if "nonprivate" not in n]:
        p = dp_zoo.card(name)["privacy"]
        rdp, pld = lines[name][4].split("[")[0].split("/")
        assert 0 <= float(rdp) - p["epsilon_rdp"] < 1e-3, (name, lines[name])
        assert pld == "-" if p["epsilon_pld"] is None else 0 <= float(pld) - p["epsilon_pld"] < 1e-3
        assert float(rdp) <= zoo.entries()[name]["target_epsilon"], lines[name]
        assert float(lines[name][3]) >= p["epsilon"]  # the eps column, rounded up
