"""Shared pieces for the zoo / card / export / serve tests.

A synthetic but complete run record that follows the run record contract
(docs/design.md) exactly, with its privacy numbers computed by the real
accountant, and tiny Keras models to export.
"""

import numpy as np

from dp_zoo import accounting

N, B, SIGMA, STEPS, DELTA, CLIP = 1437, 128, 1.1, 6, 1e-5, 1.0
# The budget guard of a private record: far above the epsilon spent (about 1.85), so that a card
# stating the target instead of the accountant's epsilon shows a different number.
TARGET = 8.0


def run_record(*, input_shape=(8, 8, 1), num_params=0, num_classes=10, tan=False, private=True,
               architecture="wrn_test"):
    """A run record as ``python -m dp_zoo.train`` writes it (contract fields + engine extras).

    A private one has ``target_epsilon`` TARGET, which differs from its epsilon.
    """
    q = B / N
    target = TARGET if private else None
    c = input_shape[-1]
    history = []
    for step in range(2, STEPS + 1, 2):
        e = accounting.epsilon(noise_multiplier=SIGMA, sampling_probability=q, steps=step, delta=DELTA) \
            if private else None
        history.append({"step": step, "epsilon": e, "loss": 2.3 - 0.1 * step,
                        "eval_accuracy": 0.1 + 0.05 * step, "eval_accuracy_ema": 0.12 + 0.04 * step})
    if private:
        eps_pld = accounting.epsilon(noise_multiplier=SIGMA, sampling_probability=q, steps=STEPS, delta=DELTA,
                                     accountant="pld")
        eps_rdp = accounting.epsilon(noise_multiplier=SIGMA, sampling_probability=q, steps=STEPS, delta=DELTA,
                                     accountant="rdp")
    else:
        eps_pld = eps_rdp = None
    privacy = {
        "private": private, "epsilon": eps_pld, "delta": DELTA, "accountant": "pld" if private else None,
        "epsilon_rdp": eps_rdp, "epsilon_pld": eps_pld, "dp_accounting_version": accounting.dp_accounting_version(),
        "noise_multiplier": SIGMA if private else 0.0, "sampling": "poisson", "sampling_probability": q,
        "dataset_size": N, "expected_batch_size": q * N, "steps": STEPS, "l2_clip": CLIP if private else None,
        "target_epsilon": target, "adjacency": "add_or_remove_one", "privacy_unit": "example",
        "tan_simulation": None, "nonfinite_steps_skipped": 0,
        "randomness": "secret: test record" if private else None,
    }
    if tan:
        privacy["tan_simulation"] = {"factor": 16.0, "epsilon_full_run": 1.0, "noise_multiplier_full_run": 10.0,
                                     "batch_size_full_run": 4096.0}
    config = {
        "model": architecture, "model_kwargs": [], "batch_size": B,
        "physical_batch_size": 64, "steps": STEPS, "epochs": None, "seed": 7, "deterministic": False,
        "eval_every": 2, "checkpoint_every": 0, "init_checkpoint": None, "tan_simulation_factor": None,
        "dp": {"l2_clip": CLIP, "noise_multiplier": SIGMA, "target_epsilon": target, "delta": DELTA,
               "accountant": "pld", "sampling": "poisson", "enabled": private},
        "augmult": {"num_views": 2, "style": "flip_crop", "pad": 1, "augment_first_view": False},
        "ema": {"decay": 0.999, "polyak_start": None},
        "optim": {"name": "sgd", "learning_rate": 2.0, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0,
                  "schedule": "constant", "warmup_steps": 0},
        "data": {"dataset": "digits", "data_dir": None, "manual_dir": None, "image_size": None,
                 "validation_size": 0},
    }
    return {
        "schema_version": 1,
        "config": config,
        "privacy": privacy,
        "history": history,
        "model": {"architecture": architecture, "num_params": num_params, "input_shape": list(input_shape),
                  "num_classes": num_classes, "init_checkpoint": None},
        "data": {"dataset": "digits", "train_split": "train[:1437]", "test_split": "train[1437:]",
                 "train_size": N, "test_size": 360, "mean": [0.3] * c, "std": [0.4] * c,
                 "public_pretraining_data": None},
        "metrics": {"test_accuracy_last": 0.4138888888888889, "test_accuracy_ema": 0.4527777777777778,
                    "test_accuracy_polyak": None, "evaluated_on": "test"},
        "software": {"dp_zoo": "0.1.0", "tensorflow": "2.21.0", "keras": "3.15.0",
                     "dp_accounting": accounting.dp_accounting_version(), "python": "3.11.7"},
        "hardware": {"platform": "Linux-x86_64", "devices": ["/device:CPU:0"], "num_replicas": 1},
        "operational": {"wall_time_s": 12.345, "note": "operational"},
        "steps_planned": STEPS,
        "steps_completed": STEPS,
        "published_weights": "ema",
    }


def tiny_model(channels=1, num_classes=10, seed=0):
    """A small functional model: Conv2D -> GroupNorm -> pool -> Dense (logits)."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, channels), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)
    x = keras.layers.GroupNormalization(groups=2)(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(num_classes)(x)
    return keras.Model(inp, out)


def exported(tmp_dir, name="wrn_digits_eps8", channels=1, **record_kw):
    """Exports a tiny model with a matching record; returns (path, model, record)."""
    from dp_zoo import export

    model = tiny_model(channels)
    rec = run_record(input_shape=(8, 8, channels), num_params=model.count_params(), **record_kw)
    path = export.export_model(model, rec, str(tmp_dir / name), entry_name=name, zoo_points=[])
    return path, model, rec


def images(n=5, channels=1, seed=1):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, channels), dtype=np.uint8)


def numbers(obj, prefix=""):
    """Every number in a nested structure as {path: value}."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(numbers(v, f"{prefix}/{k}"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(numbers(v, f"{prefix}/{i}"))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = obj
    return out
