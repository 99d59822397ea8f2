"""``python -m dp_zoo.train`` as a user runs it (real subprocesses)."""

import json
import os
import subprocess
import sys

import pytest

from dp_zoo import accounting


def cli(*args, env=None, timeout=300):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "dp_zoo.train", *args], capture_output=True,
                          text=True, timeout=timeout, env=e)


@pytest.mark.parametrize("args,match", [
    (["--batch-size", "0"], "--batch-size must be > 0"),
    (["--epsilon", "-1"], "--epsilon must be > 0"),
    (["--recipe", "wrn16_4_cifar10_eps9"], "wrn16_4_cifar10_eps8"),
    (["--model", "wrn16_5"], "wrn16_4"),
    (["--recipe", "wrn_digits_eps8", "--model", "wrn16_4"], "either --recipe or --model"),
    (["--steps", "5", "--epochs", "1"], "either --steps or --epochs"),
    (["--non-private", "--epsilon", "2"], "--non-private cannot"),
    (["--delta", "2"], "--delta must be in"),
    (["--batch-size", "lots"], "batch-size"),
    (["--no-such-flag"], "no-such-flag"),
    (["--batch-size", "100000", "--steps", "2"], "batch_size=100000"),
])
def test_bad_flags_exit_2_with_clear_message(args, match, tmp_path):
    r = cli(*args, "--run-dir", str(tmp_path / "r"), "--nopublish")
    assert r.returncode == 2, (r.stdout[-1000:], r.stderr[-2000:])
    assert match in r.stderr
    assert "Traceback" not in r.stderr


def test_tiny_real_run_writes_record_and_publishes(tmp_path):
    run_dir, pub = tmp_path / "run", tmp_path / "pub"
    r = cli("--steps", "3", "--batch-size", "128", "--physical-batch-size", "64", "--augmult", "2",
            "--noise-multiplier", "1.5", "--run-dir", str(run_dir), "--publish-dir", str(pub),
            "--noprogress")
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.load(open(run_dir / "run_record.json"))
    eps = accounting.epsilon(noise_multiplier=1.5, sampling_probability=128 / 1437, steps=3, delta=1e-5)
    assert rec["privacy"]["epsilon"] == eps and rec["privacy"]["steps"] == 3
    assert f"epsilon={eps:.4f}" in r.stdout
    assert rec["metrics"]["test_accuracy_last"] is not None
    card = json.load(open(pub / "card.json"))
    assert card["privacy"]["epsilon"] == eps
    # Re-running the finished run resumes: no extra steps, same epsilon.
    r2 = cli("--steps", "3", "--batch-size", "128", "--physical-batch-size", "64", "--augmult", "2",
             "--noise-multiplier", "1.5", "--run-dir", str(run_dir), "--nopublish", "--noprogress")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert json.load(open(run_dir / "run_record.json"))["privacy"]["steps"] == 3


def test_tan_simulation_is_marked(tmp_path):
    r = cli("--steps", "2", "--batch-size", "256", "--tan-simulate", "4", "--run-dir", str(tmp_path / "r"),
            "--nopublish", "--noprogress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "NOT private at the full run's epsilon" in r.stdout
    rec = json.load(open(tmp_path / "r" / "run_record.json"))
    t = rec["privacy"]["tan_simulation"]
    assert t["factor"] == 4.0 and rec["config"]["batch_size"] == 64
    assert rec["privacy"]["epsilon"] > t["epsilon_full_run"]


def test_default_run_shortened_publishes_model_and_card(tmp_path):
    pub = tmp_path / "pub"
    r = cli("--steps", "2", "--run-dir", str(tmp_path / "r"), "--publish-dir", str(pub), "--noprogress")
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.load(open(pub / "card.json"))
    assert card["name"] == "wrn_digits_eps8"
    assert 0 < card["privacy"]["epsilon"] <= 8.0 and card["privacy"]["steps"] == 2
    import dp_zoo
    assert dp_zoo.load(str(pub)).card["privacy"]["epsilon"] == card["privacy"]["epsilon"]


def test_fine_tune_from_keras_model_with_other_class_count(tmp_path):
    import dp_zoo

    src = dp_zoo.create_model("wrn_digits", num_classes=5)
    src.save(tmp_path / "five.keras")
    r = cli("--init", str(tmp_path / "five.keras"), "--steps", "2", "--run-dir", str(tmp_path / "r"),
            "--nopublish", "--noprogress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "re-initialised logits" in r.stdout


def test_strategy_mirrored_on_two_logical_cpus(tmp_path):
    r = cli("--strategy", "mirrored", "--logical-cpus", "2", "--steps", "2", "--physical-batch-size", "64",
            "--run-dir", str(tmp_path / "r"), "--nopublish", "--noprogress")
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.load(open(tmp_path / "r" / "run_record.json"))
    assert rec["hardware"]["num_replicas"] == 2 and rec["privacy"]["steps"] == 2


def test_in_process_cli_on_mock_cifar10(tmp_path):
    import tensorflow_datasets as tfds
    from dp_zoo.train import __main__ as train_cli

    argv = ["dp_zoo.train", "--recipe", "wrn16_4_cifar10_eps8", "--steps", "2", "--batch-size", "16",
            "--physical-batch-size", "8", "--augmult", "2", "--data-dir", str(tmp_path / "tfds"),
            "--run-dir", str(tmp_path / "r"), "--nopublish", "--noprogress"]
    train_cli.FLAGS.unparse_flags()
    train_cli.FLAGS(argv)
    try:
        name, config, recipe = train_cli.resolve()
        with tfds.testing.mock_data(num_examples=64):
            rec = train_cli.train(name, config, recipe)
    finally:
        train_cli.FLAGS.unparse_flags()
    assert rec["privacy"]["steps"] == 2 and rec["metrics"]["test_accuracy_ema"] is not None
    on_disk = json.load(open(tmp_path / "r" / "run_record.json"))
    assert on_disk["privacy"]["epsilon"] == accounting.epsilon(
        noise_multiplier=config.dp.noise_multiplier if config.dp.noise_multiplier else rec["privacy"]["noise_multiplier"],
        sampling_probability=16 / 64, steps=2, delta=1e-5, accountant="rdp")
