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
    (["--recipe", "nfnet_f3_imagenet_finetune_eps8"], "--recipe nf_resnet50_imagenet_eps8"),
    (["--model", "wrn28_10"], "To train from scratch instead, use a from-scratch recipe: --recipe wrn16_4_cifar10"),
    (["--model", "resnet18"], "Unknown architecture"),
    (["--tpu", "my-tpu"], "add --strategy tpu"),
    (["--init", "no_such_model"], "no such file, and no published zoo model"),
    (["--model", "wrn16_4", "--init", "wrn_digits_eps8"], "is a wrn_digits model; this run trains wrn16_4"),
    (["--model", "wrn16_4", "--init", "wrn16_4_cifar10_eps8"], "are not published yet"),
    (["--strategy", "tpu", "--steps", "1"], "cannot connect to a TPU"),
    (["--dataset", "cifar11"], "Did you mean: cifar10"),
    (["--dataset", "imagenet2012"], "needs a fixed image size"),
])
def test_bad_flags_exit_2_with_clear_message(args, match, tmp_path):
    r = cli(*args, "--run-dir", str(tmp_path / "r"), "--nopublish")
    assert r.returncode == 2, (r.stdout[-1000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    # One line that names the problem (absl reports flag-parsing errors its own way).
    lines = [ln for ln in r.stderr.splitlines() if match in ln]
    assert len(lines) == 1, r.stderr[-2000:]


def test_missing_data_is_a_fast_one_line_error(tmp_path):
    """No CIFAR-10 on disk and no download allowed: exit 1 within seconds, with the command that gets it."""
    import time

    t0 = time.time()
    r = cli("--model", "wrn_test", "--dataset", "cifar10", "--data-dir", str(tmp_path / "tfds"),
            "--run-dir", str(tmp_path / "r"), "--nopublish", env={"DP_ZOO_ALLOW_DOWNLOAD": "0"})
    assert r.returncode == 1, (r.stdout[-1000:], r.stderr[-2000:])
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("dp_zoo.train: error:")]
    assert len(errors) == 1 and "tfds build cifar10" in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert time.time() - t0 < 60  # the interpreter and TensorFlow start-up included
    assert not (tmp_path / "r" / "checkpoints").exists()


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
    # The published history holds no realised batch sizes (data-dependent, outside the accountant).
    assert rec["history"] and all("batch" not in h for h in rec["history"])
    card = json.load(open(pub / "card.json"))
    assert card["privacy"]["epsilon"] == eps
    # TensorBoard scalars: the accountant's epsilon after every step.
    assert tensorboard_scalars(run_dir / "tensorboard", "privacy/epsilon") == pytest.approx([
        accounting.epsilon(noise_multiplier=1.5, sampling_probability=128 / 1437, steps=t, delta=1e-5)
        for t in (1, 2, 3)], rel=1e-5)
    # Re-running the finished run resumes: no extra steps, same epsilon.
    r2 = cli("--steps", "3", "--batch-size", "128", "--physical-batch-size", "64", "--augmult", "2",
             "--noise-multiplier", "1.5", "--run-dir", str(run_dir), "--nopublish", "--noprogress")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert json.load(open(run_dir / "run_record.json"))["privacy"]["steps"] == 3


def tensorboard_scalars(logdir, tag):
    """The values of scalar ``tag`` in the event files under ``logdir``, in step order."""
    import tensorflow as tf

    points = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                if v.tag == tag:
                    points.append((event.step, float(tf.make_ndarray(v.tensor))))
    return [value for _, value in sorted(points)]


@pytest.mark.slow
def test_tan_simulation_is_marked(tmp_path):
    # --workdir: the alias of --run-dir for big_vision / timm users.
    r = cli("--steps", "2", "--batch-size", "256", "--tan-simulate", "4", "--workdir", str(tmp_path / "r"),
            "--nopublish", "--noprogress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "NOT private at the full run's epsilon" in r.stdout
    rec = json.load(open(tmp_path / "r" / "run_record.json"))
    t = rec["privacy"]["tan_simulation"]
    assert t["factor"] == 4.0 and rec["config"]["batch_size"] == 64
    assert rec["privacy"]["epsilon"] > t["epsilon_full_run"]


@pytest.mark.slow
def test_default_run_shortened_publishes_model_and_card(tmp_path):
    pub = tmp_path / "pub"
    r = cli("--steps", "2", "--run-dir", str(tmp_path / "r"), "--publish-dir", str(pub), "--noprogress")
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.load(open(pub / "card.json"))
    assert card["name"] == "wrn_digits_eps8"
    assert 0 < card["privacy"]["epsilon"] <= 8.0 and card["privacy"]["steps"] == 2
    import dp_zoo
    assert dp_zoo.load(str(pub)).card["privacy"]["epsilon"] == card["privacy"]["epsilon"]


@pytest.mark.slow
def test_fine_tune_from_keras_model_with_other_class_count(tmp_path):
    import dp_zoo

    src = dp_zoo.create_model("wrn_digits", num_classes=5)
    src.save(tmp_path / "five.keras")
    r = cli("--init", str(tmp_path / "five.keras"), "--steps", "2", "--run-dir", str(tmp_path / "r"),
            "--nopublish", "--noprogress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "re-initialised logits" in r.stdout


@pytest.mark.slow
def test_strategy_mirrored_on_two_logical_cpus(tmp_path):
    r = cli("--strategy", "mirrored", "--logical-cpus", "2", "--steps", "2", "--physical-batch-size", "64",
            "--run-dir", str(tmp_path / "r"), "--nopublish", "--noprogress")
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.load(open(tmp_path / "r" / "run_record.json"))
    assert rec["hardware"]["num_replicas"] == 2 and rec["privacy"]["steps"] == 2


def test_in_process_cli_on_mock_cifar10(tmp_path, monkeypatch):
    """A tiny WRN through the CLI's entry point on mock CIFAR-10 (in process, so mock_data applies).

    K=2 views, Poisson sampling, EMA, logical batches accumulated over
    micro-batches of 8; the run record's epsilon is the accountant's for what
    ran, and within the target the CLI calibrated sigma for.
    """
    import tensorflow_datasets as tfds
    from dp_zoo.train import __main__ as train_cli
    from dp_zoo.train import engine, sampling

    micro = []  # micro-batches per logical step
    real = sampling.micro_batches

    def counting(idx, p):
        batches = list(real(idx, p))
        micro.append(len(batches))
        return batches

    monkeypatch.setattr(engine.sampling, "micro_batches", counting)
    argv = ["dp_zoo.train", "--model", "wrn_test", "--dataset", "cifar10", "--steps", "3", "--batch-size", "16",
            "--physical-batch-size", "8", "--augmult", "2", "--data-dir", str(tmp_path / "tfds"),
            "--run-dir", str(tmp_path / "r"), "--nopublish", "--noprogress"]
    train_cli.FLAGS.unparse_flags()
    train_cli.FLAGS(argv)
    try:
        with tfds.testing.mock_data(num_examples=64):
            assert train_cli.main(["dp_zoo.train"]) == 0
    finally:
        train_cli.FLAGS.unparse_flags()
    rec = json.load(open(tmp_path / "r" / "run_record.json"))
    cfg, p = rec["config"], rec["privacy"]
    assert cfg["model"] == "wrn_test" and cfg["data"]["dataset"] == "cifar10" and cfg["augmult"]["num_views"] == 2
    assert cfg["ema"]["decay"] and rec["metrics"]["test_accuracy_ema"] is not None
    assert rec["metrics"]["test_accuracy_last"] is not None and rec["entry_name"] == "wrn_test_eps8_cifar10"
    assert p["sampling"] == "poisson" and p["dataset_size"] == 64 and p["steps"] == 3
    assert len(micro) == 3 and max(micro) >= 2, micro  # expected 16 rows in micro-batches of 8
    # sigma was recalibrated for N=64 (the digits recipe's was for N=1437).
    assert p["epsilon"] == accounting.epsilon(
        noise_multiplier=p["noise_multiplier"], sampling_probability=16 / 64, steps=3,
        delta=p["delta"], accountant=p["accountant"])
    assert p["target_epsilon"] == 8.0 and p["epsilon"] <= 8.0 + 1e-9


def _timm_state_dict(model):
    """Our NF model's weights in timm's names and layouts (the inverse of convert.py)."""
    from dp_zoo.models.convert import timm_name
    from dp_zoo.models.layers import ScaledWSConv2D, SkipInitGain, SqueezeExcite

    sd = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        p = timm_name(layer.name)
        if isinstance(layer, ScaledWSConv2D):
            sd[f"{p}.weight"] = layer.kernel.numpy().transpose(3, 2, 0, 1)
            sd[f"{p}.gain"] = layer.gain.numpy().reshape(-1, 1, 1, 1)
            if layer.use_bias:
                sd[f"{p}.bias"] = layer.bias.numpy()
        elif isinstance(layer, SqueezeExcite):
            for fc in (layer.fc1, layer.fc2):
                sd[f"{p}.{fc.name}.weight"] = fc.kernel.numpy().transpose(3, 2, 0, 1)
                sd[f"{p}.{fc.name}.bias"] = fc.bias.numpy()
        elif isinstance(layer, SkipInitGain):
            sd[p] = layer.gain.numpy()
        else:
            sd[f"{p}.weight"] = layer.kernel.numpy().T
            sd[f"{p}.bias"] = layer.bias.numpy()
    return sd


@pytest.mark.slow
def test_init_from_a_timm_state_dict(tmp_path):
    import numpy as np

    import dp_zoo
    from dp_zoo.models.nf_resnet import TIMM_CONVENTIONS
    from dp_zoo.train import __main__ as train_cli
    from dp_zoo.train.config import TrainConfig

    kw = TIMM_CONVENTIONS["nf_resnet"]
    src = dp_zoo.create_model("nf_resnet_test", num_classes=5, input_shape=(8, 8, 1), **kw)
    for w in src.weights:  # distinct values everywhere, so a misplaced tensor shows
        w.assign(np.random.default_rng(len(w.name)).normal(size=w.shape).astype("float32"))
    np.savez(tmp_path / "timm.npz", **_timm_state_dict(src))
    # In process: same class count -> every tensor lands where it came from.
    cfg = TrainConfig(model="nf_resnet_test", model_kwargs=tuple(sorted(kw.items())))
    dst = dp_zoo.create_model("nf_resnet_test", num_classes=5, input_shape=(8, 8, 1), **kw)
    assert train_cli.load_init_weights(str(tmp_path / "timm.npz"), dst, cfg, (8, 8, 1)) == []
    for a, b in zip(src.weights, dst.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Whole CLI on digits (10 classes): the 5-class head is re-initialised,
    # and the run records timm's conventions in its config.
    r = cli("--model", "nf_resnet_test", "--init", str(tmp_path / "timm.npz"), "--steps", "2",
            "--run-dir", str(tmp_path / "r"), "--nopublish", "--noprogress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "re-initialised logits" in r.stdout
    rec = json.load(open(tmp_path / "r" / "run_record.json"))
    assert dict(map(tuple, rec["config"]["model_kwargs"]))["eps_mode"] == "timm"
    assert rec["model"]["init_checkpoint"].endswith("timm.npz")


def test_timm_state_dict_for_a_wrn_is_refused(tmp_path):
    import numpy as np

    np.savez(tmp_path / "w.npz", x=np.zeros(3))
    r = cli("--init", str(tmp_path / "w.npz"), "--nopublish")
    assert r.returncode == 2 and "NF-ResNet/NFNet" in r.stderr and "Traceback" not in r.stderr


def test_read_a_torch_checkpoint_without_torch_in_this_process(tmp_path):
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch not installed (the [parity] extra)")
    from dp_zoo.train import __main__ as train_cli

    # Written in a torch-only process, nested as timm training scripts save it, in bfloat16.
    subprocess.run([sys.executable, "-c",
                    "import torch; torch.save({'state_dict': {'head.fc.bias': torch.arange(3.).bfloat16()}}, "
                    f"{str(tmp_path / 'w.pth')!r})"], check=True, timeout=120)
    sd = train_cli.read_timm_state_dict(str(tmp_path / "w.pth"))
    assert list(sd) == ["head.fc.bias"] and sd["head.fc.bias"].tolist() == [0.0, 1.0, 2.0]


def _perturbed(model, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    for w in model.weights:  # distinct values everywhere, so a misplaced tensor shows
        w.assign((w.numpy() + rng.normal(scale=0.3, size=w.shape)).astype("float32"))
    return model


def test_init_format_tells_timm_haiku_keras_and_zoo_apart(tmp_path):
    import pickle

    import numpy as np

    from dp_zoo.models.convert import save_haiku_checkpoint
    from dp_zoo.train import __main__ as train_cli

    np.savez(tmp_path / "timm.npz", **{"stem.conv.weight": np.zeros(2)})
    save_haiku_checkpoint({"wide_res_net/First_conv": {"w": np.zeros(2)}}, tmp_path / "hk.npz")
    with open(tmp_path / "F0_haiku.npz", "wb") as f:  # DeepMind's suffix, a pickle inside
        pickle.dump({"NFNet/~/linear": {"w": np.zeros(2)}}, f)
    (tmp_path / "m.keras").write_bytes(b"")
    (tmp_path / "w.dill").write_bytes(b"")
    got = {n: train_cli.init_format(str(tmp_path / n)) for n in ("timm.npz", "hk.npz", "F0_haiku.npz", "m.keras", "w.dill")}
    assert got == {"timm.npz": "timm", "hk.npz": "haiku", "F0_haiku.npz": "haiku", "m.keras": "keras", "w.dill": "haiku"}
    assert train_cli.init_format("wrn_digits_eps8") == "zoo"
    assert train_cli.init_format(str(tmp_path / "missing.keras")) is None


def test_init_from_deepmind_nfnet_pickle_with_another_class_count(tmp_path):
    """A DeepMind-style NFNet checkpoint (a pickle named .npz) fine-tunes into a 10-class model."""
    import pickle

    import numpy as np

    import dp_zoo
    from dp_zoo.models.convert import to_deepmind_nfnet
    from dp_zoo.train import __main__ as train_cli
    from dp_zoo.train.config import TrainConfig

    src = _perturbed(dp_zoo.create_model("nfnet_test", num_classes=1000, input_shape=(16, 16, 3)))
    with open(tmp_path / "F0_haiku.npz", "wb") as f:
        pickle.dump(to_deepmind_nfnet(src), f)
    dst = dp_zoo.create_model("nfnet_test", num_classes=10, input_shape=(16, 16, 3))
    head_before = [w.numpy() for w in dst.layers[-1].weights]
    fresh = train_cli.load_init_weights(str(tmp_path / "F0_haiku.npz"), dst, TrainConfig(model="nfnet_test"),
                                        (16, 16, 3))
    assert fresh == [dst.layers[-1].name]
    for a, b in zip(src.layers[:-1], dst.layers[:-1]):
        for wa, wb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(wa.numpy(), wb.numpy())
    for before, after in zip(head_before, dst.layers[-1].weights):
        np.testing.assert_array_equal(before, after.numpy())


@pytest.mark.slow
def test_fine_tune_from_haiku_wrn_and_from_a_zoo_name(tmp_path):
    """--init with a jax_privacy-style WRN pickle, and with a zoo name: the run starts from those weights."""
    import pickle

    import numpy as np

    import dp_zoo
    from dp_zoo.models.convert import to_haiku_wrn

    src = _perturbed(dp_zoo.create_model("wrn_digits", num_classes=10, input_shape=(8, 8, 1)))
    with open(tmp_path / "WRN.dill", "wb") as f:
        pickle.dump({"params": to_haiku_wrn(src), "network_state": {}}, f)
    for init, want in ((str(tmp_path / "WRN.dill"), src), ("wrn_digits_eps8", dp_zoo.load("wrn_digits_eps8"))):
        pub = tmp_path / f"pub{len(init)}"
        # wrn_digits_eps8 was trained on digits: its epsilon composes with this
        # run's, so the recipe's target (8, already spent) gives way to a sigma.
        extra = ["--noise-multiplier", "2.0"] if init == "wrn_digits_eps8" else []
        # lr 1e-9, one step: the published (EMA) weights are the initial ones to float precision.
        r = cli("--model", "wrn_digits", "--init", init, "--steps", "1", "--lr", "1e-9", "--run-dir",
                str(tmp_path / f"r{len(init)}"), "--publish-dir", str(pub), "--noprogress", *extra)
        assert r.returncode == 0, r.stderr[-3000:]
        got = dp_zoo.load(str(pub))
        for a, b in zip(want.trainable_variables, got.trainable_variables):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
        recorded = got.card["model"]["init_checkpoint"]
        assert recorded == ("zoo:wrn_digits_eps8" if init == "wrn_digits_eps8" else init), recorded
        if init == "wrn_digits_eps8":  # same data set: composed, never below the init's epsilon
            assert got.card["privacy"]["prior_runs"] and got.card["privacy"]["epsilon"] > want.card["privacy"]["epsilon"]
        else:  # converted foreign weights: public pretraining
            assert "public pretraining" in got.card["data"]["public_pretraining_data"]
