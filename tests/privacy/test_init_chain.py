"""Issue #26 item 3: --init provenance follows the whole init chain, and knows copies of zoo models.

Two ways around "a checkpoint trained on the same data composes or is refused":

- a digits model A fine-tuned on another data set as B, then ``--init B`` on digits: B's own
  record says its start was trained on digits, so A's runs must compose (or A be refused);
- a copy of a shipped ``model.keras`` in another folder, with no card beside it: dp_zoo knows
  the artifact's checksum, so the copy keeps the artifact's provenance.

The chain's cards are built as ``python -m dp_zoo.train`` would write them: a card's
``model.init`` is ``init_privacy.provenance(...).to_dict()``, what ``jobs/training.py`` records.
"""

import json
import shutil

import pytest

from dp_zoo import accounting
from dp_zoo.jobs import init_privacy
from dp_zoo.publish import zoo

from .conftest import run_cli

TINY = ["--model", "wrn_digits", "--steps", "2", "--batch-size", "64", "--physical-batch-size", "64",
        "--augmult", "1", "--ema", "0", "--nopublish", "--noprogress"]
OTHER_RUN = {"noise_multiplier": 1.5, "sampling_probability": 0.01, "steps": 100}


def _artifact(tmp_path, name, src="wrn_digits_eps8"):
    """A copy of a shipped artifact's directory at ``tmp_path/name``; returns (dir, card dict)."""
    dst = tmp_path / name
    shutil.copytree(zoo.locate(src)[0], dst)
    return dst, json.loads((dst / "card.json").read_text())


def _write(directory, card):
    (directory / "card.json").write_text(json.dumps(card))
    return str(directory / "model.keras")


def _untuned_digits_model(tmp_path):
    """A: private on digits, one DP-SGD run (the shipped eps8's weights with a card for its selected
    run alone, as in test_init_privacy)."""
    d, card = _artifact(tmp_path, "A")
    p = card["privacy"]
    p["epsilon"] = accounting.epsilon(noise_multiplier=p["noise_multiplier"], steps=p["steps"], delta=p["delta"],
                                      sampling_probability=p["sampling_probability"])
    del p["tuning"]
    card["name"] = "A"
    return _write(d, card), (p["noise_multiplier"], p["sampling_probability"], p["steps"])


def _fine_tuned(tmp_path, name, init_path, dataset, run=OTHER_RUN, prior_runs=()):
    """The card a private run on ``dataset`` started from ``init_path`` writes (its model.init is
    what jobs/training.py records)."""
    d, card = _artifact(tmp_path, name)
    prov = init_privacy.provenance(init_path, dataset)
    card["name"] = name
    card["data"]["dataset"] = dataset
    card["model"]["init_checkpoint"] = init_path
    card["model"]["init"] = prov.to_dict()
    card["privacy"] = {"private": True, "delta": 1e-5, "epsilon": 2.0, "accountant": "rdp", **run,
                       "prior_runs": [dict(zip(("noise_multiplier", "sampling_probability", "steps"), r))
                                      for r in prov.prior_runs]}
    return _write(d, card)


def test_a_tuned_digits_model_fine_tuned_elsewhere_is_still_refused_on_digits(tmp_path, capsys):
    """wrn_digits_eps8 (tuned on digits) -> B on cifar10 -> --init B on digits: refused as tuned."""
    b = _fine_tuned(tmp_path, "B", "zoo:wrn_digits_eps8", "cifar10")
    assert run_cli([*TINY, "--init", b, "--run-dir", str(tmp_path / "r")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "private hyper-parameter search" in err[0] and "wrn_digits_eps8" in err[0]
    assert not (tmp_path / "r").exists()


def test_a_private_digits_ancestor_behind_another_data_set_composes(tmp_path):
    a, a_run = _untuned_digits_model(tmp_path)
    b = _fine_tuned(tmp_path, "B", a, "cifar10")
    prov = init_privacy.provenance(b, "digits")
    assert prov.kind == init_privacy.PRIVATE_SAME_DATA
    assert prov.prior_runs == (a_run,)  # A's run; B's cifar10 run is not on digits
    rec = prov.to_dict()
    assert [(x["name"], x["dataset"]) for x in rec["ancestors"]] == [("B", "cifar10"), ("A", "digits")]
    assert rec["ancestors"][1]["runs"] == [list(a_run)] and rec["ancestors"][1]["tuned"] is False


def test_every_digits_ancestor_of_a_long_chain_composes_once(tmp_path):
    """A (digits) -> B (cifar10) -> C (digits, composes A) -> D (svhn) -> --init D on digits:
    A's and C's own runs, each once."""
    a, a_run = _untuned_digits_model(tmp_path)
    b = _fine_tuned(tmp_path, "B", a, "cifar10")
    c_run = {"noise_multiplier": 2.0, "sampling_probability": 0.05, "steps": 30}
    c = _fine_tuned(tmp_path, "C", b, "digits", run=c_run)
    d = _fine_tuned(tmp_path, "D", c, "svhn")
    prov = init_privacy.provenance(d, "digits")
    assert prov.kind == init_privacy.PRIVATE_SAME_DATA
    assert prov.prior_runs == (a_run, tuple(c_run.values()))
    assert [x["name"] for x in prov.to_dict()["ancestors"]] == ["D", "C", "B", "A"]


def test_a_non_private_digits_ancestor_behind_another_data_set_is_refused(tmp_path):
    b = _fine_tuned(tmp_path, "B", "zoo:wrn_digits_nonprivate", "cifar10")
    prov = init_privacy.provenance(b, "digits")
    assert prov.kind == init_privacy.NONPRIVATE_SAME_DATA
    with pytest.raises(init_privacy.NonPrivateInitError, match="without a privacy guarantee"):
        init_privacy.check_allowed(prov, allow_nonprivate=False)


def test_an_ancestry_the_record_does_not_carry_is_refused(tmp_path):
    """B's record names its start (trained on svhn) in the format before chains were recorded:
    what that start descends from is unknown, so it may have seen digits."""
    b = _fine_tuned(tmp_path, "B", "zoo:wrn_digits_eps8", "cifar10")
    card = json.loads((tmp_path / "B" / "card.json").read_text())
    card["model"]["init"] = {"source": "/x/start.keras", "kind": "public_pretraining", "dataset": "svhn",
                             "prior_runs": [], "epsilon": 1.0, "detail": "start, trained on svhn"}
    _write(tmp_path / "B", card)
    prov = init_privacy.provenance(b, "digits")
    with pytest.raises(ValueError, match="cannot tell") as e:
        init_privacy.check_allowed(prov, allow_nonprivate=False)
    assert "\n" not in str(e.value) and "--allow-nonprivate-init" in str(e.value)


def test_a_copy_of_a_shipped_model_without_its_card_keeps_its_provenance(tmp_path, capsys):
    """Copied into another folder as a new user would: not 'declared public'."""
    (tmp_path / "mine").mkdir()
    shutil.copy(zoo.locate("wrn_digits_eps8")[0] / "model.keras", tmp_path / "mine" / "model.keras")
    assert run_cli([*TINY, "--init", str(tmp_path / "mine" / "model.keras"), "--run-dir", str(tmp_path / "r")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "private hyper-parameter search" in err[0] and "wrn_digits_eps8" in err[0]
    shutil.copy(zoo.locate("wrn_digits_nonprivate")[0] / "model.keras", tmp_path / "base.keras")
    assert init_privacy.provenance(str(tmp_path / "base.keras"), "digits").kind == init_privacy.NONPRIVATE_SAME_DATA
    other = init_privacy.provenance(str(tmp_path / "base.keras"), "cifar10")
    assert other.kind == init_privacy.PUBLIC_PRETRAINING and other.dataset == "digits"
    assert "wrn_digits_nonprivate" in other.detail


def test_a_re_saved_copy_is_recognised_by_its_weights(tmp_path):
    import keras

    import dp_zoo.models  # noqa: F401  custom layers

    src = zoo.locate("wrn_digits_eps8")[0] / "model.keras"
    m = keras.models.load_model(src)
    m.save(tmp_path / "resaved.keras")
    assert (tmp_path / "resaved.keras").read_bytes() != src.read_bytes()
    prov = init_privacy.provenance(str(tmp_path / "resaved.keras"), "digits")
    assert prov.kind == init_privacy.TUNED_SAME_DATA and "wrn_digits_eps8" in prov.detail


def test_every_shipped_artifact_is_in_known_weights():
    """So that a copy keeps its provenance after the artifact is withdrawn from saved_models/
    (python -m dp_zoo.train.known_weights adds one)."""
    from dp_zoo.publish import known_weights

    rows = {r["model_sha256"]: r for r in known_weights.known()}
    shipped = sorted(p for p in zoo.REPO_SAVED_MODELS.iterdir() if (p / "model.keras").exists())
    assert shipped
    for d in shipped:
        row = rows.get(known_weights.manifest.sha256_file(d / "model.keras"))
        assert row is not None, f"{d.name} is not in {known_weights.KNOWN_PATH.name}"
        assert row["weights_fingerprint"] == known_weights.weights_fingerprint(d / "model.keras")
        card = json.loads((d / "card.json").read_text())
        assert row["card"]["data"]["dataset"] == card["data"]["dataset"]
        assert bool(row["card"]["privacy"]["tuning"]) == bool(card["privacy"].get("tuning"))
        assert "trials_run" not in json.dumps(row)  # the trial count is secret (issue #26 item 1)


def test_a_copy_of_a_withdrawn_model_is_not_private_on_its_data_set(tmp_path, monkeypatch):
    """Withdrawn models are gone from saved_models/ but stay in known_weights.json: a copy of one is
    trained on digits without a guarantee (its card's epsilon did not hold)."""
    import dp_zoo
    from dp_zoo.publish import known_weights

    m = dp_zoo.create_model("wrn_test", num_classes=10, input_shape=(8, 8, 1))
    m.save(tmp_path / "old.keras")
    card = {"name": "old_eps8", "data": {"dataset": "digits"}, "model": {"init": None},
            "privacy": {"private": True, "epsilon": 8.0, "noise_multiplier": 1.0, "sampling_probability": 0.2,
                        "steps": 60}}
    row = {"model_sha256": "0" * 64, "weights_fingerprint": known_weights.weights_fingerprint(tmp_path / "old.keras"),
           "shipped": "test", "card": known_weights.trimmed_card(card, withdrawn="withdrawn: seeded batches")}
    monkeypatch.setattr(known_weights, "known", lambda: [row])
    prov = init_privacy.provenance(str(tmp_path / "old.keras"), "digits")
    assert prov.kind == init_privacy.NONPRIVATE_SAME_DATA and "seeded batches" in prov.detail
    assert init_privacy.provenance(str(tmp_path / "old.keras"), "cifar10").kind == init_privacy.PUBLIC_PRETRAINING
