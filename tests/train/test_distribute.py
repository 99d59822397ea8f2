"""tf.distribute: a MirroredStrategy run over 2 CPU replicas equals a single-device run,
and its noise is drawn once per logical step globally (std sigma*C/B).

Runs in a subprocess, because logical devices must be configured before
TensorFlow initialises.
"""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import dp_zoo
    from dp_zoo.train import config as C, data, engine
    ds = data.load_dataset(C.DataConfig(), "train")
    cfg = C.TrainConfig(model="wrn_test", batch_size=64, physical_batch_size=32, steps=3, seed=1,
                        deterministic=True, dp=C.DPConfig(noise_multiplier=1.0),
                        optim=C.OptimConfig(learning_rate=0.5))
    def run(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            m = dp_zoo.create_model("wrn_test", num_classes=10)
        t = engine.Trainer(m, cfg, ds, strategy=strategy, progress=False)
        rec = t.fit()
        return [v.numpy() for v in m.trainable_variables], rec
    single, r1 = run(tf.distribute.get_strategy())
    mirrored, r2 = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    assert r2["hardware"]["num_replicas"] == 2, r2["hardware"]
    assert r1["privacy"]["nominal_epsilon"] == r2["privacy"]["nominal_epsilon"]
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(single, mirrored))
    moved = max(float(np.max(np.abs(a))) for a in single)
    print("MAXDIFF", worst, moved)
    assert worst < 1e-4, worst
    # Noise once globally, not once per replica: with sigma large the update's
    # std is sigma*C/B (two replicas each adding noise would give sqrt(2) x).
    sigma = 100.0
    cfg = C.TrainConfig(model="wrn_test", batch_size=64, physical_batch_size=32, steps=1, seed=1,
                        deterministic=True, dp=C.DPConfig(noise_multiplier=sigma),
                        ema=C.EMAConfig(decay=None), optim=C.OptimConfig(learning_rate=1.0))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        keras.utils.set_random_seed(0)
        m = dp_zoo.create_model("wrn_test", num_classes=10)
    before = np.concatenate([v.numpy().ravel() for v in m.trainable_variables])
    engine.Trainer(m, cfg, ds, strategy=strategy, progress=False).fit()
    after = np.concatenate([v.numpy().ravel() for v in m.trainable_variables])
    ratio = np.std(after - before) / (sigma * 1.0 / 64)
    print("STDRATIO", ratio)
    assert abs(ratio - 1) < 0.05, ratio
""")


@pytest.mark.slow  # two strategies' steps traced and run: ~60 s on 2 cores
def test_mirrored_two_replicas_equals_single_device():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "MAXDIFF" in r.stdout
