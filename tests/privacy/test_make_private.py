"""make_private counts every noisy update, never carries a partial sum, reports logical steps only and
logs nothing private."""

import re

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


def test_an_interrupted_fit_leaves_no_partial_sum_for_the_next_one(monkeypatch):
    from dp_zoo.engine import keras_private

    x, y = _data()
    p = _private(len(x))
    p.compile(optimizer=keras.optimizers.SGD(0.1))
    # Users' callbacks see logical steps only; a Ctrl-C can come between two micro-batches.
    real = keras_private._LogicalSteps.on_train_batch_end

    def interrupt(self, batch, logs=None):
        real(self, batch, logs)
        if batch == 1:  # mid logical step: micro-batches of 8, expected batch 40
            raise KeyboardInterrupt

    monkeypatch.setattr(keras_private._LogicalSteps, "on_train_batch_end", interrupt)
    with pytest.raises(KeyboardInterrupt):
        p.fit(x, y, steps=2, verbose=0)
    monkeypatch.setattr(keras_private._LogicalSteps, "on_train_batch_end", real)
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


def _fit_and_watch(p, x, y, capsys, steps=3):
    """Fits ``p`` with the progress bar on and a callback that logs every event; returns (history, events,
    printed text). Everything here is what a Keras user, or an autologger, sees of a fit."""
    events = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            events.append(("begin", batch))

        def on_train_batch_end(self, batch, logs=None):
            events.append(("end", batch, sorted(logs or {})))

        def on_epoch_end(self, epoch, logs=None):
            events.append(("epoch", epoch, sorted(logs or {})))

    capsys.readouterr()
    history = p.fit(x, y, steps=steps, verbose=1, callbacks=[Watch()])
    return history, events, capsys.readouterr().out


def test_what_fit_reports_counts_logical_steps_and_not_the_realised_batches(capsys):
    """History.params, the progress bar and the callbacks' batch events count logical DP steps; they
    are the same for two runs whose secret Poisson batches differ (Keras would count micro-batches,
    sum_t ceil(|B_t| / p), and print ms/step)."""
    x, y = _data()
    seen = []
    for _ in range(2):
        p = _private(len(x))  # a fresh secret each: different batch sizes
        p.compile(optimizer=keras.optimizers.SGD(0.1))
        seen.append(_fit_and_watch(p, x, y, capsys))
    for history, events, out in seen:
        assert history.params["steps"] == 3
        assert [e[1] for e in events if e[0] == "begin"] == [0, 1, 2]
        assert "/step" not in out and not re.search(r"\d\s*(ms|us|s)\b", out), out  # no timing
        assert "3/3" in out
    assert seen[0][0].params == seen[1][0].params
    assert seen[0][1] == seen[1][1]
    assert seen[0][2] == seen[1][2]


@pytest.mark.parametrize("kwarg, value", [
    ("validation_data", "xy"), ("validation_split", 0.2), ("sample_weight", "ones"),
    ("class_weight", {0: 2.0}), ("initial_epoch", 1), ("steps_per_epoch", 2),
])
def test_fit_refuses_the_keras_arguments_it_would_drop(kwarg, value):
    x, y = _data()
    p = _private(len(x))
    p.compile(optimizer=keras.optimizers.SGD(0.1))
    value = {"xy": (x, y), "ones": np.ones(len(x))}.get(value, value) if isinstance(value, str) else value
    with pytest.raises(ValueError, match=kwarg) as e:
        p.fit(x, y, steps=1, verbose=0, **{kwarg: value})
    assert "\n" not in str(e.value)
    assert p.ledger.steps == 0
