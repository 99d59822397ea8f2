"""``python -m dp_zoo.train``: the command line as a user runs it.

One real process checks the exit-code plumbing of a bad flag, one runs a real
(short, 2-replica) training job end to end, one reads a torch checkpoint; every
other case runs the same command line in this process through the CLI's
``main()`` (``helpers.train_in_process``), with sigma given
wherever calibration is not the subject (a PLD calibration takes 30-50 s here).
"""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest

import dp_zoo
from dp_zoo import accounting
from tests.helpers import TINY_TRAIN_ARGS, train_in_process, train_subprocess

# The default recipe (wrn_digits_eps8): its sigma is calibrated for these.
DIGITS_N, RECIPE_B, RECIPE_STEPS, RECIPE_DELTA = 1437, 256, 120, 1e-5


@pytest.mark.parametrize("args,match", [
    (["--batch-size", "0"], "--batch-size must be > 0"),
    (["--epsilon", "-1"], "--epsilon must be > 0"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--recipe", "wrn16_4_cifar10_eps9"], "wrn16_4_cifar10_eps8"),
    (["--model", "wrn16_5"], "wrn16_4"),
    (["--recipe", "wrn_digits_eps8", "--model", "wrn16_5"], "--model: unknown architecture 'wrn16_5'"),
    (["--steps", "5", "--epochs", "1"], "either --steps or --epochs"),
    (["--non-private", "--epsilon", "2"], "--non-private cannot"),
    (["--delta", "2"], "--delta must be in"),
    (["--batch-size", "lots"], "batch-size"),
    (["--no-such-flag"], "no-such-flag"),
    (["--batch-size", "100000", "--steps", "2"], "--batch-size 100000 must be in [1, 1437]"),
    (["--recipe", "nfnet_f3_imagenet_finetune_eps8"], "--recipe nf_resnet50_imagenet_eps8"),
    (["--model", "wrn28_10"], "To train from scratch instead, use a from-scratch recipe: --recipe wrn16_4_cifar10"),
    (["--model", "resnet18"], "--model: unknown architecture"),
    (["--tpu", "my-tpu"], "add --strategy tpu"),
    (["--init", "no_such_model"], "no such file, and no published zoo model"),
    (["--init", "/no/such.keras"], "no such file"),
    (["--model", "wrn16_4", "--init", "wrn_digits_eps8"], "is a wrn_digits model; this run trains wrn16_4"),
    (["--model", "wrn16_4", "--init", "wrn16_4_cifar10_eps8"], "are not published yet"),
    (["--strategy", "tpu", "--steps", "1"], "cannot connect to a TPU"),
    (["--dataset", "cifar11"], "Did you mean: cifar10"),
    (["--dataset", "imagenet2012"], "needs a fixed image size"),
    (["--streaming", "--steps", "1"], "always held in memory"),
    (["--deterministic-noise"], "replaced by --deterministic"),
    (["--precision", "fp8"], "--precision 'fp8' is not supported: use float32 or bf16"),
])
def test_bad_flags_exit_2_with_one_line_naming_the_problem(args, match, tmp_path, capsys):
    code = train_in_process(*args, "--run-dir", str(tmp_path / "r"), "--nopublish", "--noprogress")
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    # In the command line's words: flags, not the library's Python names.
    assert not re.search(r"\b(batch_size|target_epsilon|noise_multiplier|calibrate_noise)\b", err), err
    # One line that names the problem.
    assert len([ln for ln in err.splitlines() if match in ln]) == 1, err[-2000:]
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_a_bad_flag_exits_2_from_a_real_process(tmp_path):
    """The process wiring (``python -m dp_zoo.train`` around main) gives the exit code and no traceback."""
    r = train_subprocess("--batch-size", "0", "--run-dir", str(tmp_path / "r"), "--nopublish")
    assert r.returncode == 2, (r.stdout[-1000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("dp_zoo.train: error:")] == [
        "dp_zoo.train: error: --batch-size must be > 0, got 0."]


def test_missing_data_is_a_fast_one_line_error(tmp_path, monkeypatch, capsys):
    """No CIFAR-10 on disk and no download allowed: exit 1 within seconds, with the command that gets it."""
    import time

    monkeypatch.setenv("DP_ZOO_ALLOW_DOWNLOAD", "0")
    t0 = time.time()
    code = train_in_process("--model", "wrn_test", "--dataset", "cifar10", "--data-dir", str(tmp_path / "tfds"),
                            "--run-dir", str(tmp_path / "r"), "--nopublish")
    err = capsys.readouterr().err
    assert code == 1, err[-2000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("dp_zoo.train: error:")]
    assert len(errors) == 1 and "tfds build cifar10" in errors[0], err[-2000:]
    assert time.time() - t0 < 10
    assert not (tmp_path / "r" / "checkpoints").exists()


def tensorboard_scalars(logdir, tag):
    """The values of scalar ``tag`` in the event files under ``logdir``, in step order."""
    import tensorflow as tf

    points = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                if v.tag == tag:
                    points.append((event.step, float(tf.make_ndarray(v.tensor))))
    return sorted(points)


@pytest.mark.slow  # a real training process on two replicas, run twice
def test_a_real_run_in_a_process_on_two_replicas_records_publishes_and_resumes(tmp_path, capsys):
    """The README's main job, shortened, as a user runs it: a real process, 2 logical CPUs mirrored."""
    run_dir, pub = tmp_path / "run", tmp_path / "pub"
    args = ["--steps", "3", "--batch-size", "128", "--physical-batch-size", "64", "--augmult", "2",
            "--noise-multiplier", "1.5", "--checkpoint-every", "1", "--run-dir", str(run_dir), "--noprogress"]
    r = train_subprocess(*args, "--strategy", "mirrored", "--logical-cpus", "2", "--publish-dir", str(pub))
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.load(open(run_dir / "run_record.json"))
    eps = accounting.epsilon(noise_multiplier=1.5, sampling_probability=128 / DIGITS_N, steps=3, delta=1e-5)
    assert rec["privacy"]["epsilon"] == eps and rec["privacy"]["steps"] == 3
    assert rec["hardware"]["num_replicas"] == 2
    assert f"epsilon={eps:.4f}" in r.stdout
    assert rec["metrics"]["evaluated_on"] == "test" and rec["published_weights"] == "ema"
    # The published history holds no realised batch sizes (data-dependent, outside the accountant).
    assert rec["history"] and all("batch" not in h for h in rec["history"])
    # Published where --publish-dir says, under the recipe's name, loadable with its card.
    card = json.load(open(pub / "card.json"))
    assert card["name"] == "wrn_digits_eps8" and card["privacy"]["epsilon"] == eps
    published = dp_zoo.load(str(pub))
    assert published.card["privacy"] == card["privacy"]
    # The recorded test accuracy is the published (EMA) model's on the digits test split.
    from dp_zoo import data
    from dp_zoo.recipes import config as C

    test = data.load_dataset(C.DataConfig(), "test")
    logits = published(test.images).numpy()  # uint8 pixels, as the card states
    assert abs(rec["metrics"]["test_accuracy_ema"] - np.mean(np.argmax(logits, 1) == test.labels)) <= 1 / len(test)
    # TensorBoard scalars at the log points (every checkpoint here): the accountant's epsilon,
    # an upper bound from its precomputed curve before the last step, exact at the last.
    exact = [accounting.epsilon(noise_multiplier=1.5, sampling_probability=128 / DIGITS_N, steps=t, delta=1e-5)
             for t in (1, 2, 3)]
    logged = tensorboard_scalars(run_dir / "tensorboard", "privacy/epsilon")
    assert [t for t, _ in logged] == [1, 2, 3]
    assert all(v >= e * (1 - 1e-6) for (_, v), e in zip(logged, exact)), (logged, exact)
    assert logged[-1][1] == pytest.approx(eps, rel=1e-6)
    # Re-running the finished run resumes it: no extra step, same epsilon.
    assert train_in_process(*args, "--nopublish") == 0, capsys.readouterr().err[-3000:]
    rec2 = json.load(open(run_dir / "run_record.json"))
    assert rec2["privacy"]["steps"] == 3 and rec2["privacy"]["epsilon"] == eps
    assert rec2["weights_sha256"] == rec["weights_sha256"]


class _CalibrationSpy:
    """Stands in for ``accounting.calibrate_noise``: records what it was asked and answers 2.5.

    The CLI's job is to ask for the right calibration (target, q, steps, delta);
    the calibration itself is tested against published values in test_accounting.py.
    """

    SIGMA = 2.5

    def __init__(self):
        self.calls = []

    def __call__(self, **kw):
        self.calls.append(kw)
        return self.SIGMA


def _resolved_sigma(args, monkeypatch):
    """(sigma the run will use, target epsilon, spy calls) for ``python -m dp_zoo.train ARGS`` on digits."""
    from dp_zoo.commands import train as cli
    from dp_zoo.engine import resolve

    spy = _CalibrationSpy()
    monkeypatch.setattr(resolve.accounting, "calibrate_noise", spy)
    _, config, _ = cli.resolve(cli._parser().parse_args(args))
    n = DIGITS_N - config.data.validation_size
    return resolve.resolve_config(config, n).noise_multiplier, config.dp.target_epsilon, spy.calls


def _asked(eps=8.0, b=RECIPE_B, n=DIGITS_N, steps=RECIPE_STEPS, delta=RECIPE_DELTA):
    return dict(target_epsilon=eps, sampling_probability=b / n, steps=steps, delta=delta, accountant="pld",
                prior_runs=())


@pytest.mark.parametrize("args,asked", [
    (["--epsilon", "4"], _asked(eps=4.0)),
    (["--delta", "1e-6"], _asked(delta=1e-6)),
    (["--batch-size", "128"], _asked(b=128)),
    (["--steps", "60"], _asked(steps=60)),
    (["--epochs", "2"], _asked(steps=math.ceil(2 * DIGITS_N / RECIPE_B))),  # epochs -> steps: 12
    (["--epsilon", "2", "--batch-size", "512", "--steps", "30"], _asked(eps=2.0, b=512, steps=30)),
    (["--validation-size", "300"], _asked(n=DIGITS_N - 300)),  # N shrinks, so q = B/N grows
], ids=["epsilon", "delta", "batch-size", "steps", "epochs", "all", "validation-size"])
def test_sigma_is_recalibrated_when_the_guarantee_changes(args, asked, monkeypatch):
    """The recipe's sigma is for its (epsilon, delta, q = B/N, steps): a flag changing any of them recalibrates."""
    sigma, target, calls = _resolved_sigma(args, monkeypatch)
    assert calls == [asked]
    assert sigma == _CalibrationSpy.SIGMA and target == asked["target_epsilon"]


@pytest.mark.parametrize("args,sigma,target", [
    ([], None, 8.0),  # the recipe's own sigma, calibrated for its configuration
    (["--lr", "0.5", "--augmult", "2", "--ema", "0", "--seed", "3"], None, 8.0),  # not part of the guarantee
    (["--noise-multiplier", "3", "--steps", "60"], 3.0, None),
    (["--epsilon", "4", "--noise-multiplier", "3"], 3.0, 4.0),  # the epsilon is then a budget guard
])
def test_sigma_is_kept_when_given_or_when_the_guarantee_is_unchanged(args, sigma, target, monkeypatch):
    from dp_zoo.recipes import recipes

    recipe_sigma = recipes.get("wrn_digits_eps8").config.dp.noise_multiplier
    got, got_target, calls = _resolved_sigma(args, monkeypatch)
    assert calls == []
    assert got == (sigma if sigma is not None else recipe_sigma) and got_target == target


def test_non_private_run_publishes_a_baseline_without_epsilon(tmp_path, capsys):
    code = train_in_process("--non-private", "--steps", "2", "--batch-size", "64",
                            "--physical-batch-size", "64", "--augmult", "1", "--noprogress",
                            "--run-dir", str(tmp_path / "r"), "--publish-dir", str(tmp_path / "pub"))
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "WITHOUT privacy" in out.out and "privacy: none (non-private baseline)" in out.out
    rec = json.load(open(tmp_path / "r" / "run_record.json"))
    p = rec["privacy"]
    assert p["private"] is False and p["epsilon"] is None and p["noise_multiplier"] in (None, 0.0)
    assert rec["entry_name"] == "wrn_digits_nonprivate" and rec["steps_completed"] == 2
    card = json.load(open(tmp_path / "pub" / "card.json"))
    assert card["headline"].startswith("NOT PRIVATE") and card["privacy"]["epsilon"] is None


def test_the_run_record_binds_the_published_ema_weights(tmp_path, capsys):
    """run_record.json's published_weights_sha256 is the digest of the weights published (EMA here), the
    same in the artifact's record and recomputed from the loaded model."""
    from dp_zoo.publish import manifest

    code = train_in_process(*TINY_TRAIN_ARGS, "--ema", "0.5", "--run-dir", str(tmp_path / "r"),
                            "--publish-dir", str(tmp_path / "pub"))
    assert code == 0, capsys.readouterr().err[-3000:]
    rec = json.load(open(tmp_path / "r" / "run_record.json"))
    assert rec["published_weights"] == "ema"
    published = dp_zoo.load(str(tmp_path / "pub"))
    digest = manifest.weights_sha256(published.get_weights())
    assert rec["published_weights_sha256"] == digest == published.card["artifact"]["published_weights_sha256"]
    assert json.load(open(tmp_path / "pub" / "run_record.json")) == rec


def test_validation_size_holds_out_examples_and_evaluates_on_them(tmp_path, capsys):
    code = train_in_process(*TINY_TRAIN_ARGS, "--validation-size", "300", "--run-dir", str(tmp_path / "r"),
                            "--nopublish")
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    rec = json.load(open(tmp_path / "r" / "run_record.json"))
    assert rec["metrics"]["evaluated_on"] == "validation" and "validation accuracy" in out.out
    assert (rec["data"]["train_size"], rec["data"]["test_size"]) == (DIGITS_N - 300, 300)
    # The accountant's q is for the examples actually trained on.
    assert rec["privacy"]["dataset_size"] == DIGITS_N - 300
    assert rec["privacy"]["sampling_probability"] == 64 / (DIGITS_N - 300)
    assert rec["privacy"]["epsilon"] == accounting.epsilon(
        noise_multiplier=1.0, sampling_probability=64 / (DIGITS_N - 300), steps=2, delta=1e-5)


def test_tan_simulation_is_marked(tmp_path, capsys):
    # --workdir: the alias of --run-dir for big_vision / timm users.
    code = train_in_process("--model", "wrn_test", "--steps", "2", "--batch-size", "256", "--augmult", "1",
                            "--noise-multiplier", "2.0", "--tan-simulate", "4", "--workdir", str(tmp_path / "r"),
                            "--nopublish", "--noprogress")
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "NOT private at the full run's epsilon" in out.out
    rec = json.load(open(tmp_path / "r" / "run_record.json"))
    t, p = rec["privacy"]["tan_simulation"], rec["privacy"]
    assert t["factor"] == 4.0 and rec["config"]["batch_size"] == 64 and p["noise_multiplier"] == 0.5
    assert t["epsilon_full_run"] == accounting.epsilon(noise_multiplier=2.0, sampling_probability=256 / DIGITS_N,
                                                       steps=2, delta=1e-5)
    assert p["epsilon"] > t["epsilon_full_run"]


def test_fine_tune_from_keras_model_with_other_class_count(tmp_path, capsys):
    src = dp_zoo.create_model("wrn_test", num_classes=5, input_shape=(8, 8, 1))
    src.save(tmp_path / "five.keras")
    code = train_in_process(*TINY_TRAIN_ARGS, "--init", str(tmp_path / "five.keras"),
                            "--run-dir", str(tmp_path / "r"), "--nopublish")
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "re-initialised logits" in out.out


@pytest.mark.slow  # a whole run on TFDS mock data through the CLI (resize, normalisation, train, export)
def test_in_process_cli_on_mock_cifar10(tmp_path, monkeypatch):
    """A tiny WRN through the CLI's entry point on mock CIFAR-10 (in process, so mock_data applies).

    K=2 views, Poisson sampling, EMA, logical batches accumulated over
    micro-batches of 8; sigma is recalibrated for the mock data set's N=64
    (the calibration itself is replaced by a spy: see
    test_sigma_is_recalibrated_when_the_guarantee_changes), and the run
    record's epsilon is the accountant's for what ran.
    """
    import tensorflow_datasets as tfds
    from dp_zoo.data import sampling
    from dp_zoo.engine import trainer as engine

    micro = []  # micro-batches per logical step
    real = sampling.micro_batches

    def counting(idx, p):
        batches = list(real(idx, p))
        micro.append(len(batches))
        return batches

    spy = _CalibrationSpy()
    monkeypatch.setattr(engine.sampling, "micro_batches", counting)
    monkeypatch.setattr(engine.accounting, "calibrate_noise", spy)
    with tfds.testing.mock_data(num_examples=64):
        assert train_in_process(
            "--model", "wrn_test", "--dataset", "cifar10", "--steps", "3", "--batch-size", "16",
            "--physical-batch-size", "8", "--augmult", "2", "--data-dir", str(tmp_path / "tfds"),
            "--run-dir", str(tmp_path / "r"), "--nopublish", "--noprogress") == 0
    rec = json.load(open(tmp_path / "r" / "run_record.json"))
    cfg, p = rec["config"], rec["privacy"]
    assert cfg["model"] == "wrn_test" and cfg["data"]["dataset"] == "cifar10" and cfg["augmult"]["num_views"] == 2
    assert cfg["ema"]["decay"] and rec["metrics"]["test_accuracy_ema"] is not None
    assert rec["metrics"]["test_accuracy_last"] is not None and rec["entry_name"] == "wrn_test_eps8_cifar10"
    assert p["sampling"] == "poisson" and p["dataset_size"] == 64 and p["steps"] == 3
    assert len(micro) == 3 and max(micro) >= 2, micro  # expected 16 rows in micro-batches of 8
    # sigma was recalibrated for N=64 (the digits recipe's was for N=1437).
    assert spy.calls == [_asked(b=16, n=64, steps=3)]
    assert p["noise_multiplier"] == _CalibrationSpy.SIGMA and p["target_epsilon"] == 8.0
    assert p["epsilon"] == accounting.epsilon(noise_multiplier=_CalibrationSpy.SIGMA, sampling_probability=16 / 64,
                                              steps=3, delta=p["delta"], accountant=p["accountant"])


def _timm_state_dict(model):
    """Our NF model's weights in timm's names and layouts (written independently of convert.to_timm_state_dict)."""
    from dp_zoo.models.convert import timm_name
    from dp_zoo.models.layers import SkipInitGain, SqueezeExcite
    from dp_zoo.models.ws_conv import ScaledWSConv2D

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


@pytest.mark.slow  # a converted NF-ResNet fine-tuned through the CLI
def test_init_from_a_timm_state_dict(tmp_path, capsys):
    import dp_zoo
    from dp_zoo.jobs import init_weights
    from dp_zoo.models.nf_resnet import TIMM_CONVENTIONS
    from dp_zoo.recipes.config import TrainConfig

    kw = TIMM_CONVENTIONS["nf_resnet"]
    src = dp_zoo.create_model("nf_resnet_test", num_classes=5, input_shape=(8, 8, 1), **kw)
    for w in src.weights:  # distinct values everywhere, so a misplaced tensor shows
        w.assign(np.random.default_rng(len(w.name)).normal(size=w.shape).astype("float32"))
    np.savez(tmp_path / "timm.npz", **_timm_state_dict(src))
    # Same class count -> every tensor lands where it came from.
    cfg = TrainConfig(model="nf_resnet_test", model_kwargs=tuple(sorted(kw.items())))
    dst = dp_zoo.create_model("nf_resnet_test", num_classes=5, input_shape=(8, 8, 1), **kw)
    assert init_weights.load_init_weights(str(tmp_path / "timm.npz"), dst, cfg, (8, 8, 1)) == []
    for a, b in zip(src.weights, dst.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The whole CLI on digits (10 classes): the 5-class head is re-initialised,
    # and the run records timm's conventions in its config.
    code = train_in_process("--model", "nf_resnet_test", "--init", str(tmp_path / "timm.npz"), "--steps", "2",
                            "--batch-size", "64", "--physical-batch-size", "64", "--augmult", "1",
                            "--noise-multiplier", "1.0", "--run-dir", str(tmp_path / "r"), "--nopublish",
                            "--noprogress")
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "re-initialised logits" in out.out
    rec = json.load(open(tmp_path / "r" / "run_record.json"))
    assert dict(map(tuple, rec["config"]["model_kwargs"]))["eps_mode"] == "timm"
    assert rec["model"]["init_checkpoint"].endswith("timm.npz")


def test_timm_state_dict_for_a_wrn_is_refused(tmp_path, capsys):
    np.savez(tmp_path / "w.npz", x=np.zeros(3))
    assert train_in_process("--init", str(tmp_path / "w.npz"), "--nopublish") == 2
    err = capsys.readouterr().err
    assert "NF-ResNet/NFNet" in err and "Traceback" not in err


def test_read_a_torch_checkpoint_without_torch_in_this_process(tmp_path):
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch not installed (the [parity] extra)")
    from dp_zoo.jobs import init_weights

    # Written in a torch-only process, nested as timm training scripts save it, in bfloat16.
    subprocess.run([sys.executable, "-c",
                    "import torch; torch.save({'state_dict': {'head.fc.bias': torch.arange(3.).bfloat16()}}, "
                    f"{str(tmp_path / 'w.pth')!r})"], check=True, timeout=120)
    sd = init_weights.read_timm_state_dict(str(tmp_path / "w.pth"))
    assert list(sd) == ["head.fc.bias"] and sd["head.fc.bias"].tolist() == [0.0, 1.0, 2.0]
    assert "torch" not in sys.modules


def _perturbed(model, seed=0):
    rng = np.random.default_rng(seed)
    for w in model.weights:  # distinct values everywhere, so a misplaced tensor shows
        w.assign((w.numpy() + rng.normal(scale=0.3, size=w.shape)).astype("float32"))
    return model


def test_init_format_tells_timm_haiku_keras_and_zoo_apart(tmp_path):
    import pickle

    from dp_zoo.jobs import init_weights
    from dp_zoo.models.convert import save_haiku_checkpoint

    np.savez(tmp_path / "timm.npz", **{"stem.conv.weight": np.zeros(2)})
    save_haiku_checkpoint({"wide_res_net/First_conv": {"w": np.zeros(2)}}, tmp_path / "hk.npz")
    with open(tmp_path / "F0_haiku.npz", "wb") as f:  # DeepMind's suffix, a pickle inside
        pickle.dump({"NFNet/~/linear": {"w": np.zeros(2)}}, f)
    (tmp_path / "m.keras").write_bytes(b"")
    (tmp_path / "w.dill").write_bytes(b"")
    got = {n: init_weights.init_format(str(tmp_path / n)) for n in ("timm.npz", "hk.npz", "F0_haiku.npz", "m.keras", "w.dill")}
    assert got == {"timm.npz": "timm", "hk.npz": "haiku", "F0_haiku.npz": "haiku", "m.keras": "keras", "w.dill": "haiku"}
    assert init_weights.init_format("wrn_digits_eps8") == "zoo"
    assert init_weights.init_format(str(tmp_path / "missing.keras")) is None


def test_init_from_deepmind_nfnet_pickle_with_another_class_count(tmp_path):
    """A DeepMind-style NFNet checkpoint (a pickle named .npz) fine-tunes into a 10-class model."""
    import pickle

    from dp_zoo.jobs import init_weights
    from dp_zoo.models.convert import to_deepmind_nfnet
    from dp_zoo.recipes.config import TrainConfig

    src = _perturbed(dp_zoo.create_model("nfnet_test", num_classes=1000, input_shape=(16, 16, 3)))
    with open(tmp_path / "F0_haiku.npz", "wb") as f:
        pickle.dump(to_deepmind_nfnet(src), f)
    dst = dp_zoo.create_model("nfnet_test", num_classes=10, input_shape=(16, 16, 3))
    head_before = [w.numpy() for w in dst.layers[-1].weights]
    fresh = init_weights.load_init_weights(str(tmp_path / "F0_haiku.npz"), dst, TrainConfig(model="nfnet_test"),
                                        (16, 16, 3))
    assert fresh == [dst.layers[-1].name]
    for a, b in zip(src.layers[:-1], dst.layers[:-1]):
        for wa, wb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(wa.numpy(), wb.numpy())
    for before, after in zip(head_before, dst.layers[-1].weights):
        np.testing.assert_array_equal(before, after.numpy())


@pytest.mark.parametrize("source", ["haiku", "zoo"])
def test_fine_tune_from_haiku_wrn_and_from_a_zoo_name(source, tmp_path, capsys):
    """--init with a jax_privacy-style WRN pickle, and with a zoo name: the run starts from those weights."""
    import pickle

    from dp_zoo.models.convert import to_haiku_wrn

    if source == "haiku":
        want = _perturbed(dp_zoo.create_model("wrn_digits", num_classes=10, input_shape=(8, 8, 1)))
        init = str(tmp_path / "WRN.dill")
        with open(init, "wb") as f:
            pickle.dump({"params": to_haiku_wrn(want), "network_state": {}}, f)
        extra = ["--noise-multiplier", "2.0"]  # sigma given: calibration is not the subject
    else:
        # The shipped, registered baseline. (The shipped private digits models were chosen by
        # private tuning on digits, which --init refuses: tests/privacy/test_init_privacy.py;
        # composing a private init is tested there too.)
        init, want = "wrn_digits_nonprivate", dp_zoo.load("wrn_digits_nonprivate")
        extra = ["--noise-multiplier", "2.0", "--allow-nonprivate-init"]
    # lr 1e-9, one step: the trained weights are the initial ones to float precision. (No export:
    # the run record and the final checkpoint are what the run started from and what it spent.)
    run_dir = tmp_path / "r"
    code = train_in_process("--model", "wrn_digits", "--init", init, "--steps", "1", "--lr", "1e-9",
                            "--batch-size", "64", "--augmult", "1", "--run-dir", str(run_dir), "--nopublish",
                            "--noprogress", *extra)
    assert code == 0, capsys.readouterr().err[-3000:]
    ckpt = np.load(sorted((run_dir / "checkpoints").glob("*.npz"))[-1])
    assert len(want.variables) == len([k for k in ckpt.files if k.startswith("model/")])
    for i, v in enumerate(want.variables):
        np.testing.assert_allclose(ckpt[f"model/{i}"], v.numpy(), rtol=1e-5, atol=1e-6)
    rec = json.load(open(run_dir / "run_record.json"))
    recorded = rec["model"]["init_checkpoint"]
    if source == "zoo":  # same data set, trained without privacy: the result is not private
        assert recorded == "zoo:wrn_digits_nonprivate"
        assert rec["privacy"]["private"] is False and rec["privacy"]["epsilon"] is None
    else:  # converted foreign weights: public pretraining
        assert recorded == init
        assert "public pretraining" in rec["data"]["public_pretraining_data"]


def test_a_slow_calibration_and_the_first_step_say_what_is_happening(monkeypatch, capsys):
    """Over 2 s without output (sigma calibration took 39 s, the first step's tracing 13 s, in silence):
    a line says what is happening; a fast one prints nothing."""
    import dataclasses
    import time

    from dp_zoo.engine import resolve
    from dp_zoo.recipes import recipes

    config = recipes.get("wrn_digits_eps8").config
    config = config.replace(steps=120, dp=dataclasses.replace(config.dp, noise_multiplier=None))

    def slow(**kw):
        time.sleep(2.5)
        return 1.23

    monkeypatch.setattr(resolve.accounting, "calibrate_noise", slow)
    assert resolve.resolve_config(config, 1437).noise_multiplier == 1.23
    assert capsys.readouterr().err.strip() == ("Calibrating the noise multiplier sigma for epsilon=8 over 120 steps "
                                               "(PLD accountant; this can take a minute)...")
    monkeypatch.setattr(resolve.accounting, "calibrate_noise", lambda **kw: 1.0)
    assert resolve.resolve_config(config, 1437).noise_multiplier == 1.0
    time.sleep(0.1)
    assert capsys.readouterr().err == ""
