"""Item 5: nothing published depends on the private data except through the noisy updates.

Two runs that differ only in their secret randomness (which examples were
sampled, and the noise) must publish records and cards that differ only in
what is computed from the weights (metrics, hashes): no wall-clock total
either, as it grows with the realised batch sizes. TensorBoard and the
progress bar carry no realised batch sizes or per-step timings.
"""

import copy
import json

from dp_zoo.cards.model_card import ModelCard

from .conftest import TINY_CLI, make_trainer, run_cli, tiny_config

WEIGHT_DERIVED_HISTORY = ("loss", "eval_accuracy", "eval_accuracy_ema")


def _strip(card):
    """A card or record without its weight-derived and operational fields."""
    c = copy.deepcopy(card)
    for key in ("metrics", "weights_sha256", "published_weights_sha256", "run_record_sha256", "headline"):
        c.pop(key, None)
    for h in c.get("history", []):
        for key in WEIGHT_DERIVED_HISTORY:
            h.pop(key, None)
    return c


def test_two_runs_differing_in_sampling_publish_the_same_card_up_to_weights(tmp_path, capsys):
    records = []
    for name in ("a", "b"):
        assert run_cli([*TINY_CLI, "--steps", "3", "--eval-every", "1", "--run-dir", str(tmp_path / name)]) == 0
        assert "done in" not in capsys.readouterr().out  # the console prints no elapsed time either
        with open(tmp_path / name / "run_record.json") as f:
            records.append(json.load(f))
    a, b = records
    assert a["weights_sha256"] != b["weights_sha256"]  # the randomness really differed
    assert "wall_time_s" not in a and a["operational"]["wall_time_s"] is None, a["operational"]
    assert _strip(a) == _strip(b)
    ca, cb = (ModelCard.from_run_record("x", r).to_json() for r in records)
    assert _strip(ca) == _strip(cb)
    assert ca["headline"] == cb["headline"]  # epsilon is the accountant's for the configuration
    assert "| wall time (s; operational, not covered by the guarantee) | not published" in (
        ModelCard.from_run_record("x", a).to_markdown())


def test_tensorboard_and_progress_bar_hold_no_batch_sizes_or_step_timings(digits_train, tmp_path, capsys):
    import tensorflow as tf

    run_dir = tmp_path / "run"
    t = make_trainer(tiny_config(steps=3, checkpoint_every=2), digits_train, run_dir=str(run_dir), progress=True)
    t.fit()
    err = capsys.readouterr().err
    assert "DP-SGD" in err and "eps<=" in err and "eps<==" not in err
    for leak in ("batch=", "it/s", "s/step", "step/s", "<"):  # "<" as in tqdm's elapsed<remaining
        assert leak not in err.replace("eps<=", ""), leak
    tags, steps = set(), set()
    for f in (run_dir / "tensorboard").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for v in event.summary.value:
                tags.add(v.tag)
                steps.add(event.step)
    assert "privacy/epsilon" in tags
    assert not any("speed" in tag or "time" in tag for tag in tags), tags
    assert steps == {2, 3}  # the public log schedule (every 2 steps, and the last), not every step
