"""Item 2: a reproducible run (--deterministic) seeds sampling and noise, and is published as NOT private."""

import json

from dp_zoo.cards.model_card import ModelCard

from .conftest import TINY_CLI, run_cli


def _record(run_dir):
    with open(run_dir / "run_record.json") as f:
        return json.load(f)


def test_deterministic_runs_are_reproducible_and_published_as_not_private(tmp_path, restore_op_determinism):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli([*TINY_CLI, "--deterministic", "--run-dir", str(a)]) == 0
    assert run_cli([*TINY_CLI, "--deterministic", "--run-dir", str(b)]) == 0
    ra, rb = _record(a), _record(b)
    assert ra["weights_sha256"] == rb["weights_sha256"]  # same batches, same noise
    p = ra["privacy"]
    assert p["private"] is False and p["epsilon"] is None
    card = ModelCard.from_run_record("x", ra)
    assert card.headline().startswith("NOT differentially private (reproducible run)")
    assert "private: false" in card.to_markdown()
    assert card.to_json()["privacy"]["private"] is False


def test_a_private_run_is_not_reproducible_from_its_card(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli([*TINY_CLI, "--run-dir", str(a)]) == 0
    assert run_cli([*TINY_CLI, "--run-dir", str(b)]) == 0
    ra, rb = _record(a), _record(b)
    assert ra["config"] == rb["config"]  # everything published about the configuration
    assert ra["weights_sha256"] != rb["weights_sha256"]
    assert ra["privacy"]["private"] is True
    assert ModelCard.from_run_record("x", ra).headline().startswith("(")


def test_old_deterministic_noise_flag_is_refused_with_the_new_name(capsys):
    assert run_cli([*TINY_CLI, "--deterministic-noise"]) == 2
    err = capsys.readouterr().err
    assert "--deterministic" in err and "NOT differentially private" in err
