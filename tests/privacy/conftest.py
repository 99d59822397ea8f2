"""Shared pieces of the privacy tests: tiny configurations, trainers and the in-process CLI."""

import numpy as np
import pytest

from dp_zoo.recipes import config as C


@pytest.fixture(scope="session")
def digits_train():
    from dp_zoo import data

    return data.load_dataset(C.DataConfig(), "train")


@pytest.fixture(scope="session")
def digits_test():
    from dp_zoo import data

    return data.load_dataset(C.DataConfig(), "test")


def tiny_config(**kw):
    """A few-step private run of the tiny WRN on digits (sigma given: no calibration)."""
    base = dict(model="wrn_test", batch_size=64, physical_batch_size=32, steps=3, seed=3,
                checkpoint_every=1, dp=C.DPConfig(noise_multiplier=1.0, l2_clip=1.0, delta=1e-5),
                ema=C.EMAConfig(decay=None), optim=C.OptimConfig(learning_rate=0.5),
                augmult=C.AugmultConfig(num_views=1, style="none"))
    base.update(kw)
    return C.TrainConfig(**base)


def make_trainer(config, train, **kw):
    import keras

    import dp_zoo
    from dp_zoo.engine import trainer as engine

    keras.utils.set_random_seed(config.seed)
    model = dp_zoo.create_model(config.model, num_classes=10, input_shape=train.input_shape)
    kw.setdefault("progress", False)
    return engine.Trainer(model, config, train, **kw)


def spy_batches(trainer):
    """Records, per step, the example indices the engine actually used."""
    seen = {}
    real = trainer._micro_sum

    def spy(idx, mask, step, m):
        seen.setdefault(int(step), []).extend(np.asarray(idx)[np.asarray(mask) > 0].tolist())
        return real(idx, mask, step, m)

    trainer._micro_sum = spy
    return seen


def run_cli(argv):
    """``python -m dp_zoo.train ARGV`` in this process; returns the exit code."""
    from dp_zoo.commands import train as cli

    return cli.main(list(argv))


@pytest.fixture
def restore_op_determinism():
    """The CLI's --deterministic switches TensorFlow's op determinism on for the process; undo it."""
    yield
    from tensorflow.python.framework import config as tf_config

    tf_config.disable_op_determinism()


TINY_CLI = ["--model", "wrn_test", "--steps", "2", "--batch-size", "64", "--physical-batch-size", "64",
            "--augmult", "1", "--noise-multiplier", "1.0", "--ema", "0", "--nopublish", "--noprogress"]
