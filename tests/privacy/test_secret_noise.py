"""The Gaussian noise is secret randomness too, not only the batches (docs/privacy.md).

The sampling tests cannot see noise keyed by the published seed: two runs of
one configuration draw different batches anyway. Here two runs are forced
onto the same batches, with the same initialisation, data, augmentation and
learning rate, so their released updates differ only by their noise. Noise
derivable from anything both runs share (the seed, the configuration) would
make the difference zero, and an adversary could subtract it.
"""

import keras
import numpy as np

import dp_zoo
from dp_zoo.data import sampling

from .conftest import make_trainer, tiny_config


def _update(trainer):
    before = [v.numpy().copy() for v in trainer.model.trainable_variables]
    trainer.fit()
    return np.concatenate([(v.numpy() - w).ravel() for v, w in zip(trainer.model.trainable_variables, before)])


def _noise_only_difference(a, b, lr, sigma, clip, batch):
    """||a - b|| over what it would be if a and b carried independent noise (sqrt(2) lr sigma C / B per
    coordinate): about 1 for fresh noise, 0 for shared noise."""
    return np.linalg.norm(a - b) / (np.sqrt(2 * a.size) * lr * sigma * clip / batch)


def test_two_runs_on_the_same_batches_add_independent_noise(digits_train, tmp_path):
    cfg = tiny_config(steps=1)
    a = make_trainer(cfg, digits_train, run_dir=str(tmp_path / "a"))
    b = make_trainer(cfg, digits_train, run_dir=str(tmp_path / "b"))
    b.sampler = a.sampler  # the same batches (a's secret) in both runs; b keeps its own secret for the noise
    ua, ub = _update(a), _update(b)
    ratio = _noise_only_difference(ua, ub, cfg.optim.learning_rate, cfg.dp.noise_multiplier, cfg.dp.l2_clip,
                                   cfg.batch_size)
    assert 0.9 < ratio < 1.1, f"the two runs' noise is not independent (difference ratio {ratio:.3g})"


def test_make_private_noise_is_independent_between_two_models_on_the_same_batches(monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 120)
    fixed, real = sampling.RunSecret.generate(), sampling.PoissonSampler
    # Every sampler draws with one fixed secret: both models train on the same batches.
    monkeypatch.setattr(sampling, "PoissonSampler", lambda n, q, secret, p: real(n, q, fixed, p))
    updates = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        inner = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
        private = dp_zoo.make_private(inner, l2_clip=1.0, noise_multiplier=1.0, dataset_size=120, batch_size=40,
                                      physical_batch_size=16)
        private.compile(optimizer=keras.optimizers.SGD(0.5))
        before = [w.copy() for w in inner.get_weights()]
        private.fit(x, y, steps=1, verbose=0)
        updates.append(np.concatenate([(w - v).ravel() for w, v in zip(inner.get_weights(), before)]))
    ratio = _noise_only_difference(*updates, 0.5, 1.0, 1.0, 40)
    assert 0.85 < ratio < 1.15, f"the two models' noise is not independent (difference ratio {ratio:.3g})"
