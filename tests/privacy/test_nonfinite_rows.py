"""Item 6: one example with a non-finite gradient is zeroed like a padding row; the step still happens."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import dp_zoo
from dp_zoo import dp, preprocessing

from .conftest import make_trainer, tiny_config


def _dense():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])


def _wrn():
    keras.utils.set_random_seed(0)
    return dp_zoo.create_model("wrn_test", num_classes=10, input_shape=(8, 8, 1))


@pytest.mark.parametrize("build,paths", [(_dense, {}), (_wrn, dict(ghost=True, fold_gain=False)),
                                         (_wrn, dict(ghost=False, fold_gain=True))],
                         ids=["dense", "wrn_ghost", "wrn_fold"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_example_contributes_zero_and_the_rest_is_unchanged(build, paths, bad):
    model = build()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 1, 8, 8, 1)).astype(np.float32)
    y = np.array([1, 2, 3, 4])
    x[2, 0, 3, 3, 0] = bad
    got, _ = dp.clipped_grad_sum(model, x, y, l2_clip=1.0, mask=np.ones(4, np.float32), **paths)
    clean = x.copy()
    clean[2] = 0.0
    want, _ = dp.clipped_grad_sum(model, clean, y, l2_clip=1.0, mask=np.array([1, 1, 0, 1], np.float32),
                                      **paths)
    for g, w in zip(got, want):
        assert np.all(np.isfinite(g.numpy()))
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)


def test_the_engine_step_still_happens_with_its_noise(digits_train):
    """A step whose sampled batch holds a non-finite example is applied, noise included."""
    t = make_trainer(tiny_config(steps=1), digits_train)
    real = preprocessing.normalize

    def poisoned(images, mean, std):  # the first row of every micro-batch becomes NaN
        x = real(images, mean, std)
        return tf.concat([x[:1] * np.nan, x[1:]], 0)

    before = [v.numpy().copy() for v in t.model.trainable_variables]
    preprocessing.normalize = poisoned
    try:
        t._compile_fns()
        assert t.train_step(0)["finite"] is True
    finally:
        preprocessing.normalize = real
    after = [v.numpy() for v in t.model.trainable_variables]
    assert t.nonfinite_steps == 0 and t.ledger.steps == 1
    assert all(np.all(np.isfinite(a)) for a in after)
    assert any(np.any(a != b) for a, b in zip(after, before))
