"""Item 4: make_private counts every noisy update, never carries a partial sum, logs nothing private."""

import keras
import numpy as np
import pytest

import dp_zoo


def _data(n=120):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, n)


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])


def _private(n, **kw):
    args = dict(l2_clip=1.0, noise_multiplier=1.0, dataset_size=n, batch_size=40, physical_batch_size=8)
    args.update(kw)
    return dp_zoo.make_private(_model(), **args)


def test_steps_per_execution_is_refused_rather_than_miscounted():
    x, y = _data()
    p = _private(len(x))
    p.compile(optimizer=keras.optimizers.SGD(0.1), steps_per_execution=4)
    with pytest.raises(ValueError, match="steps_per_execution"):
        p.fit(x, y, steps=6, verbose=0)
    assert p.ledger.steps == 0


def test_an_interrupted_fit_leaves_no_partial_sum_for_the_next_one():
    x, y = _data()
    p = _private(len(x))
    p.compile(optimizer=keras.optimizers.SGD(0.1))

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:  # mid logical step: micro-batches of 8, expected batch 40
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        p.fit(x, y, steps=2, verbose=0, callbacks=[Interrupt()])
    assert any(np.abs(a.numpy()).sum() > 0 for a in p._acc)  # the interrupted step's partial sum
    assert p.ledger.steps == 1  # its noise was never drawn, but it is counted (write-ahead)
    seen = []

    class Look(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                seen.append(max(float(np.abs(a.numpy()).max()) for a in p._acc))

    p.fit(x, y, steps=1, verbose=0, callbacks=[Look()])
    assert seen == [0.0]


def test_history_holds_the_epsilon_and_nothing_computed_from_the_data():
    x, y = _data()
    p = _private(len(x))
    p.compile(optimizer=keras.optimizers.SGD(0.1))
    history = p.fit(x, y, steps=2, verbose=0)
    assert set(history.history) == {"epsilon"}
    assert history.history["epsilon"][-1] == p.epsilon() > 0


def test_a_seeded_run_warns_and_says_it_is_not_private():
    x, _ = _data()
    with pytest.warns(UserWarning, match="NOT differentially private"):
        p = _private(len(x), seed=1)
    assert p.is_private is False
    assert _private(len(x)).is_private is True
