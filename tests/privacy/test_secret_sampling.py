"""Item 1: batch selection is secret randomness, never recomputable from what is published.

An attacker with the card (its seed), the code and the public example order
who could recompute which steps an example joined would remove the
amplification by subsampling the accountant credits (docs/privacy.md).
"""

import json
import os

import numpy as np

from dp_zoo.data import sampling

from .conftest import make_trainer, spy_batches, tiny_config


def _attacker_guesses(seed, step, n, q):
    """Every way the code has ever derived a batch from the published seed."""
    guesses = [np.flatnonzero(np.random.default_rng([seed, step, 0x5EED]).random(n) < q)]
    if hasattr(sampling, "RunSecret"):
        guesses.append(np.flatnonzero(sampling.RunSecret.from_seed(seed).sampling_rng(step).random(n) < q))
    return guesses


def test_batches_cannot_be_recomputed_from_the_published_seed(digits_train, tmp_path):
    cfg = tiny_config(steps=3)
    t = make_trainer(cfg, digits_train, run_dir=str(tmp_path / "run"))
    seen = spy_batches(t)
    record = t.fit()
    assert record["config"]["seed"] == cfg.seed  # what the card publishes
    n, q = len(digits_train), cfg.batch_size / len(digits_train)
    for step, used in seen.items():
        for guess in _attacker_guesses(cfg.seed, step, n, q):
            assert sorted(used) != guess.tolist(), f"step {step}'s batch follows from the published seed"


def test_secret_has_256_bits_lives_only_in_the_run_dir(digits_train, tmp_path):
    run_dir = tmp_path / "run"
    t = make_trainer(tiny_config(steps=1), digits_train, run_dir=str(run_dir))
    record = t.fit()
    files = [f for f in os.listdir(run_dir) if "secret" in f]
    assert len(files) == 1
    key = (run_dir / files[0]).read_bytes()
    assert len(key) * 8 >= 128
    assert os.stat(run_dir / files[0]).st_mode & 0o077 == 0  # owner-only
    published = json.dumps(record)
    for form in (key.hex(), key.hex().upper(), __import__("base64").b64encode(key).decode(),
                 str(int.from_bytes(key, "little")), str(int.from_bytes(key, "big"))):
        assert form not in published
    assert "secret" not in json.dumps(record["config"])


def test_a_resumed_run_replays_its_batches_a_new_run_does_not(digits_train, tmp_path):
    cfg = tiny_config(steps=2)
    a = make_trainer(cfg, digits_train, run_dir=str(tmp_path / "a"))
    again = make_trainer(cfg, digits_train, run_dir=str(tmp_path / "a"))
    other = make_trainer(cfg, digits_train, run_dir=str(tmp_path / "b"))
    for step in range(3):
        assert np.array_equal(a.sampler.indices(step), again.sampler.indices(step))
        assert not np.array_equal(a.sampler.indices(step), other.sampler.indices(step))


def test_make_private_keys_its_sampling_with_a_128_bit_secret():
    import dp_zoo

    inner = dp_zoo.create_model("wrn_test", num_classes=10, input_shape=(8, 8, 1))
    a = dp_zoo.make_private(inner, l2_clip=1.0, noise_multiplier=1.0, dataset_size=100, batch_size=10)
    b = dp_zoo.make_private(inner, l2_clip=1.0, noise_multiplier=1.0, dataset_size=100, batch_size=10)
    assert a.secret.bits >= 128 and not a.secret.reproducible and a.is_private
    assert a.secret.to_bytes() != b.secret.to_bytes()


def test_sampler_streams_do_not_depend_on_the_secret_only_through_few_bits():
    """Two secrets that differ in one bit give unrelated batches (the whole key is used)."""
    k = bytearray(b"\x00" * 32)
    base = sampling.RunSecret(bytes(k))
    k[31] ^= 1
    flipped = sampling.RunSecret(bytes(k))
    x = sampling.poisson_sample(10_000, 0.1, secret=base, step=0)
    y = sampling.poisson_sample(10_000, 0.1, secret=flipped, step=0)
    overlap = len(np.intersect1d(x, y)) / len(x)
    assert 0.05 < overlap < 0.15  # independent draws overlap in about q of their rows
