"""Item 3: --init from a model trained on the same data composes its privacy, or is refused.

The shipped digits models are the initial checkpoints: ``wrn_digits_eps8`` (private, digits,
chosen by private tuning: refused, and, with a card for its selected run alone, composed) and
``wrn_digits_nonprivate`` (a baseline on digits).
"""

import json
import shutil

import pytest

import dp_zoo
from dp_zoo import accounting
from dp_zoo.cards.model_card import ModelCard
from dp_zoo.jobs import init_privacy
from dp_zoo.publish import zoo

from .conftest import run_cli

TINY = ["--model", "wrn_digits", "--steps", "2", "--batch-size", "64", "--physical-batch-size", "64",
        "--augmult", "1", "--ema", "0", "--nopublish", "--noprogress"]


def _record(run_dir):
    with open(run_dir / "run_record.json") as f:
        return json.load(f)


def _untuned_private_init(tmp_path):
    """A private digits checkpoint whose card states one DP-SGD run (no tuning): the shipped
    wrn_digits_eps8's weights with a card for its selected run alone (a test fixture)."""
    src = zoo.locate("wrn_digits_eps8")[0]
    dst = tmp_path / "init"
    shutil.copytree(src, dst)
    card = json.loads((dst / "card.json").read_text())
    p = card["privacy"]
    p["epsilon"] = accounting.epsilon(noise_multiplier=p["noise_multiplier"], sampling_probability=p["sampling_probability"],
                                      steps=p["steps"], delta=p["delta"])
    del p["tuning"]
    (dst / "card.json").write_text(json.dumps(card))
    return str(dst / "model.keras"), p


def test_a_private_init_on_the_same_data_is_composed(tmp_path):
    path, init = _untuned_private_init(tmp_path)
    assert run_cli([*TINY, "--init", path, "--noise-multiplier", "3.0",
                    "--run-dir", str(tmp_path / "r")]) == 0
    p = _record(tmp_path / "r")["privacy"]
    prior = ((init["noise_multiplier"], init["sampling_probability"], init["steps"]),)
    assert [tuple(r.values()) for r in p["prior_runs"]] == list(prior)
    total = accounting.epsilon(noise_multiplier=3.0, sampling_probability=64 / 1437, steps=2, delta=1e-5,
                               prior_runs=prior)
    assert p["private"] is True and p["epsilon"] == total
    assert p["epsilon"] > init["epsilon"]  # never below the initial checkpoint's
    card = ModelCard.from_run_record("x", _record(tmp_path / "r"))
    assert "composed with the initial checkpoint" in card.to_markdown()


def test_a_tuned_init_on_the_same_data_is_refused_in_one_line(tmp_path, capsys):
    """The shipped private digits models were tuned (dp_zoo.tune): their epsilon is a tuning total,
    and composing only the selected run's steps would under-state a fine-tuned model's epsilon."""
    assert dp_zoo.card("wrn_digits_eps8")["privacy"]["tuning"]
    assert run_cli([*TINY, "--init", "wrn_digits_eps8", "--run-dir", str(tmp_path / "r")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "private hyper-parameter search" in err[0] and "cannot yet compose" in err[0]
    assert not (tmp_path / "r").exists()


def test_a_non_private_init_on_the_same_data_is_refused_in_one_line(tmp_path, capsys):
    assert run_cli([*TINY, "--init", "wrn_digits_nonprivate", "--run-dir", str(tmp_path / "r")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "without a privacy guarantee" in err[0] and "--allow-nonprivate-init" in err[0]
    assert not (tmp_path / "r").exists()


def test_an_allowed_non_private_init_is_published_as_not_private(tmp_path):
    assert run_cli([*TINY, "--init", "wrn_digits_nonprivate", "--allow-nonprivate-init", "--noise-multiplier", "3.0",
                    "--run-dir", str(tmp_path / "r")]) == 0
    rec = _record(tmp_path / "r")
    assert rec["privacy"]["private"] is False and rec["privacy"]["epsilon"] is None
    assert ModelCard.from_run_record("x", rec).headline().startswith(
        "NOT differentially private (non-private initial checkpoint)")


def test_a_keras_file_without_a_card_is_a_declaration_of_public_data(tmp_path):
    m = dp_zoo.create_model("wrn_digits", num_classes=10, input_shape=(8, 8, 1))
    m.save(tmp_path / "mine.keras")
    assert run_cli([*TINY, "--init", str(tmp_path / "mine.keras"), "--noise-multiplier", "3.0",
                    "--run-dir", str(tmp_path / "r")]) == 0
    rec = _record(tmp_path / "r")
    assert rec["model"]["init"]["kind"] == init_privacy.DECLARED_PUBLIC
    assert "declared" in rec["data"]["public_pretraining_data"]
    assert "prior_runs" not in rec["privacy"]
    assert rec["privacy"]["epsilon"] == accounting.epsilon(noise_multiplier=3.0, sampling_probability=64 / 1437,
                                                           steps=2, delta=1e-5)


def test_a_card_of_another_data_set_is_public_pretraining_and_chains_compose():
    card = {"name": "m", "data": {"dataset": "cifar10"}, "model": {"init": None},
            "privacy": {"private": True, "epsilon": 3.0, "noise_multiplier": 2.0, "sampling_probability": 0.1,
                        "steps": 10}}
    other = init_privacy.provenance("zoo:m", "digits", card=card)
    assert other.kind == init_privacy.PUBLIC_PRETRAINING and other.prior_runs == ()
    same = init_privacy.provenance("zoo:m", "cifar10", card=card)
    assert same.kind == init_privacy.PRIVATE_SAME_DATA and same.prior_runs == ((2.0, 0.1, 10),)
    # A card that itself composed an earlier run hands on the whole chain.
    card["privacy"]["prior_runs"] = [{"noise_multiplier": 1.0, "sampling_probability": 0.2, "steps": 5}]
    chain = init_privacy.provenance("zoo:m", "cifar10", card=card)
    assert chain.prior_runs == ((1.0, 0.2, 5), (2.0, 0.1, 10))


def test_calibration_targets_the_total_and_refuses_a_spent_budget():
    prior = ((2.0, 0.1, 20),)
    spent = accounting.epsilon(noise_multiplier=2.0, sampling_probability=0.1, steps=20, delta=1e-5)
    sigma = accounting.calibrate_noise(target_epsilon=spent + 1.0, sampling_probability=0.1, steps=20,
                                       delta=1e-5, prior_runs=prior)
    total = accounting.epsilon(noise_multiplier=sigma, sampling_probability=0.1, steps=20, delta=1e-5,
                               prior_runs=prior)
    assert spent < total <= spent + 1.0
    with pytest.raises(ValueError, match="already spent"):
        accounting.calibrate_noise(target_epsilon=spent * 0.9, sampling_probability=0.1, steps=20,
                                   delta=1e-5, prior_runs=prior)
