"""make_private: model.fit trains with DP-SGD and tracks epsilon."""

import keras
import numpy as np
import pytest

import dp_zoo
from dp_zoo import accounting
from dp_zoo import data
from dp_zoo.preprocessing import normalize
from dp_zoo.recipes import config as C


@pytest.fixture(scope="module")
def digits():
    tr = data.load_dataset(C.DataConfig(), "train")
    te = data.load_dataset(C.DataConfig(), "test")
    f = lambda d: normalize(d.images, tr.mean, tr.std).numpy()
    return f(tr), tr.labels, f(te), te.labels


def fit_tiny(x, y, **kw):
    keras.utils.set_random_seed(0)
    inner = dp_zoo.create_model("wrn_test", num_classes=10)
    args = dict(l2_clip=1.0, noise_multiplier=1.0, dataset_size=len(x), batch_size=64,
                physical_batch_size=32, seed=1)
    args.update(kw)
    private = dp_zoo.make_private(inner, **args)
    private.compile(optimizer=keras.optimizers.SGD(1.0))
    before = [v.numpy().copy() for v in inner.trainable_variables]
    private.fit(x, y, steps=2, verbose=0)
    after = [v.numpy() for v in inner.trainable_variables]
    return private, before, after


def test_noise_once_per_logical_step_whatever_the_micro_batch_size(digits):
    x, y, _, _ = digits
    p1, _, a = fit_tiny(x, y, physical_batch_size=16)
    p2, _, b = fit_tiny(x, y, physical_batch_size=128)
    assert p1.ledger.steps == p2.ledger.steps == 2
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)


def test_update_noise_std_is_sigma_c_over_expected_b(digits):
    x, y, _, _ = digits
    sigma, c, b = 100.0, 1.0, 64
    _, before, after = fit_tiny(x, y, noise_multiplier=sigma, l2_clip=c, batch_size=b)
    delta = np.concatenate([(a - w).ravel() for a, w in zip(after, before)])
    # 2 steps of lr 1: std sqrt(2) * sigma C / B; the clipped signal is negligible.
    want = np.sqrt(2) * sigma * c / b
    assert abs(delta.std() / want - 1) < 0.05


@pytest.mark.slow
def test_fit_trains_privately_and_tracks_epsilon(digits):
    x, y, xt, yt = digits
    keras.utils.set_random_seed(0)
    inner = dp_zoo.create_model("wrn_digits", num_classes=10)
    # RDP: calibrating sigma with PLD takes 30-50 s here, and calibration is not the subject.
    private = dp_zoo.make_private(inner, l2_clip=1.0, target_epsilon=8.0, dataset_size=len(x),
                                  batch_size=256, steps=30, physical_batch_size=128, accountant="rdp")
    private.compile(optimizer=keras.optimizers.SGD(2.0))
    hist = private.fit(x, y, steps=30, verbose=0)
    assert private.ledger.steps == 30
    eps = accounting.epsilon(noise_multiplier=private.noise_multiplier, sampling_probability=256 / len(x),
                             steps=30, delta=1e-5, accountant="rdp")
    assert eps >= 8.0 * 0.99  # sigma calibrated for the planned 30 steps, not for fewer or more
    assert private.epsilon() == eps <= 8.0
    assert hist.history["epsilon"][-1] == eps
    acc = np.mean(np.argmax(inner.predict(xt, verbose=0), 1) == yt)
    assert acc > 0.5  # chance is 0.1
    # The budget guard refuses a fit that would overshoot.
    with pytest.raises(accounting.BudgetExceededError, match="target_epsilon=8"):
        private.fit(x, y, steps=1000, verbose=0)


def test_misuse_is_a_clear_error(digits):
    x, y, _, _ = digits
    inner = dp_zoo.create_model("wrn_test", num_classes=10)
    with pytest.raises(ValueError, match="noise_multiplier or target_epsilon"):
        dp_zoo.make_private(inner, l2_clip=1.0, dataset_size=len(x), batch_size=64)
    private = dp_zoo.make_private(inner, l2_clip=1.0, noise_multiplier=1.0, dataset_size=len(x), batch_size=64)
    private.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="Poisson"):
        private.fit(x, y, batch_size=32)
    with pytest.raises(ValueError, match="dataset_size"):
        private.fit(x[:100], y[:100])


@pytest.mark.parametrize("bad_y, message", [
    (lambda y: y + 10, r"label 19; labels must be class indices in \[0, 9\] \(the model has 10 outputs\)"),
    (lambda y: y - 1, r"label -1; labels must be class indices in \[0, 9\]"),
    (lambda y: np.eye(10)[y], r"look one-hot; pass integer class indices \[N\], e.g. y.argmax\(axis=1\)"),
    (lambda y: y + 0.5, r"non-integer labels .* would otherwise be truncated"),
    (lambda y: y.astype(str), r"integer class indices as labels, got dtype <U"),
    (lambda y: y[:-1], r"got 1437 examples in x but 1436 labels in y"),
    (lambda y: np.stack([y, y], 1), r"integer labels of shape \[N\], got shape \(1437, 2\)"),
])
def test_bad_labels_are_one_clear_line_before_anything_is_traced(digits, bad_y, message):
    """Each bad y raises a ValueError naming the problem and the fix, before the DP step runs or the
    ledger counts a step (without the check: graph errors, or float labels silently truncated)."""
    x, y, _, _ = digits
    private = dp_zoo.make_private(dp_zoo.create_model("wrn_test", num_classes=10), l2_clip=1.0,
                                  noise_multiplier=1.0, dataset_size=len(x), batch_size=64)
    private.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=message) as e:
        private.fit(x, bad_y(y), steps=1, verbose=0)
    assert "\n" not in str(e.value) and private.ledger.steps == 0


def test_fit_accepts_integral_float_and_column_labels_and_names_a_wrong_example_shape(digits):
    from dp_zoo.engine.fit_inputs import check_fit_arrays
    x, y, _, _ = digits
    kw = dict(dataset_size=len(x), num_classes=10, input_shape=x.shape[1:])
    for labels in (y.astype(np.float64), y[:, None], y.astype(np.int64)):
        _, got = check_fit_arrays(x, labels, **kw)
        assert got.dtype == np.int32 and np.array_equal(got, y)
    with pytest.raises(ValueError, match=r"examples of shape \(8, 8\) but the model takes \(8, 8, 1\); reshape x"):
        check_fit_arrays(x[..., 0], y, **kw)


def test_tracks_epsilon_and_refuses_a_fit_over_budget(digits):
    x, y, _, _ = digits
    private, _, _ = fit_tiny(x, y, target_epsilon=1.5)  # sigma=1 given: the target is a guard
    want = accounting.epsilon(noise_multiplier=1.0, sampling_probability=64 / len(x), steps=2, delta=1e-5)
    assert private.ledger.steps == 2 and private.epsilon() == want < 1.5
    with pytest.raises(accounting.BudgetExceededError, match="target_epsilon=1.5"):
        private.fit(x, y, steps=1000, verbose=0)
    assert private.ledger.steps == 2  # nothing was taken


def _dense_private(n, **kw):
    """A private linear classifier on 8x8 inputs: the cheapest model make_private accepts."""
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    args = dict(l2_clip=1.0, noise_multiplier=1.0, dataset_size=n, batch_size=40, physical_batch_size=16)
    args.update(kw)
    p = dp_zoo.make_private(inner, **args)
    p.compile(optimizer=keras.optimizers.SGD(0.5))
    return p


def _toy(n=120):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, n)


def test_epochs_are_converted_to_ceil_epochs_n_over_b_steps():
    """epochs=E means ceil(E * N / B) logical steps: in fit, and in make_private's calibration."""
    from dp_zoo.engine import resolve

    x, y = _toy()
    p = _dense_private(len(x))
    p.fit(x, y, epochs=1.5, verbose=0)
    assert p.ledger.steps == 5  # ceil(1.5 * 120 / 40) = ceil(4.5)
    p.fit(x, y, verbose=0)  # epochs=1 by default
    assert p.ledger.steps == 8
    # make_private(epochs=) calibrates sigma for ceil(E * N / B) steps (RDP: fast, and exact to check).
    q = 40 / 120
    cal = _dense_private(len(x), noise_multiplier=None, target_epsilon=4.0, epochs=2.1, accountant="rdp")
    kw = dict(noise_multiplier=cal.noise_multiplier, sampling_probability=q, delta=1e-5, accountant="rdp")
    assert accounting.epsilon(steps=7, **kw) <= 4.0 < accounting.epsilon(steps=8, **kw)  # ceil(6.3) = 7
    assert accounting.epsilon(steps=7, **kw) >= 4.0 * 0.999
    # The engine's conversion is the same.
    off = C.DPConfig(enabled=False)
    assert resolve.resolve_config(C.TrainConfig(steps=None, epochs=2.1, batch_size=40, dp=off), 120).steps == 7
    assert resolve.resolve_config(C.TrainConfig(steps=None, epochs=2.0, batch_size=40, dp=off), 120).steps == 6
    assert resolve.resolve_config(C.TrainConfig(steps=9, epochs=None, batch_size=40, dp=off), 120).steps == 9
    with pytest.raises(ValueError, match="steps or epochs"):
        resolve.resolve_config(C.TrainConfig(steps=None, epochs=None, batch_size=40, dp=off), 120)


def test_a_second_fit_continues_the_poisson_schedule(monkeypatch):
    """fit(2 steps) then fit(3 steps) draws steps 0..4 of one Poisson schedule (never step 0 again) and
    ends where one fit(5 steps) ends (seeded, so both are reproducible)."""
    import warnings

    from dp_zoo.data import sampling

    x, y = _toy()
    drawn = []
    real = sampling.PoissonSampler.micro_batches

    def spy(self, step):
        drawn.append(int(step))
        return real(self, step)

    monkeypatch.setattr(sampling.PoissonSampler, "micro_batches", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a seeded run warns that it is not private
        two = _dense_private(len(x), seed=7)
        one = _dense_private(len(x), seed=7)
    two.fit(x, y, steps=2, verbose=0)
    assert drawn == [0, 1]
    two.fit(x, y, steps=3, verbose=0)
    assert drawn == [0, 1, 2, 3, 4] and two.ledger.steps == 5
    one.fit(x, y, steps=5, verbose=0)
    assert drawn[5:] == [0, 1, 2, 3, 4]
    for a, b in zip(two.inner.get_weights(), one.inner.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert two.epsilon() == one.epsilon()
