"""Poisson sampling: per-example inclusion law, independence, static shapes, no truncation, the run secret."""

import numpy as np
import pytest
from scipy import stats

from dp_zoo.data import sampling

SECRET = sampling.RunSecret(bytes(range(32)))


def _inclusions(n, q, steps, secret=SECRET):
    """``[steps, n]`` 0/1 matrix: whether example i joined step t."""
    out = np.zeros((steps, n), np.int8)
    for t in range(steps):
        out[t, sampling.poisson_sample(n, q, secret=secret, step=t)] = 1
    return out


def test_every_example_joins_each_step_with_probability_q():
    """Per-example counts over T steps are Binomial(T, q): a chi-square test of their histogram.

    A sampler that always took the first ~qN examples, or fixed-size
    batches, fails this: its per-example counts are 0 or T, or too even.
    """
    n, q, steps = 2000, 0.05, 300
    counts = _inclusions(n, q, steps).sum(axis=0)
    # Pool the binomial pmf into bins with expected count >= 5.
    edges = [0, 8, 11, 13, 15, 17, 19, 22, steps + 1]
    observed = np.histogram(counts, bins=edges)[0]
    cdf = stats.binom.cdf(np.array(edges) - 1, steps, q)
    expected = n * np.diff(cdf)
    assert expected.min() >= 5
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert stats.chi2.sf(chi2, len(observed) - 1) > 1e-3, (observed, expected.round(1))


def test_batch_sizes_are_binomial_not_fixed():
    n, q, steps = 2000, 0.05, 400
    sizes = _inclusions(n, q, steps).sum(axis=1)
    assert abs(sizes.mean() - n * q) < 4 * np.sqrt(n * q * (1 - q) / steps)
    # Variance of Binomial(n, q): a fixed-size sampler has variance 0.
    assert 0.7 < sizes.var() / (n * q * (1 - q)) < 1.3


def test_inclusions_are_independent_across_steps_and_examples():
    n, q, steps = 2000, 0.1, 200
    m = _inclusions(n, q, steps).astype(float)
    # Consecutive steps: P(in t and in t+1) = q^2 for independent draws.
    both = (m[:-1] * m[1:]).mean()
    assert abs(both - q * q) < 5 * np.sqrt(q * q * (1 - q * q) / (n * (steps - 1)))
    # Neighbouring examples: no correlation between i and i+1 within a step.
    pair = (m[:, :-1] * m[:, 1:]).mean()
    assert abs(pair - q * q) < 5 * np.sqrt(q * q * (1 - q * q) / ((n - 1) * steps))


def test_same_secret_and_step_same_sample_other_step_or_secret_other_sample():
    a = sampling.poisson_sample(1000, 0.1, secret=SECRET, step=5)
    assert np.array_equal(a, sampling.poisson_sample(1000, 0.1, secret=SECRET, step=5))
    assert not np.array_equal(a, sampling.poisson_sample(1000, 0.1, secret=SECRET, step=6))
    other = sampling.RunSecret.generate()
    assert not np.array_equal(a, sampling.poisson_sample(1000, 0.1, secret=other, step=5))


def test_a_plain_seed_is_refused():
    with pytest.raises(TypeError, match="RunSecret"):
        sampling.poisson_sample(10, 0.5, secret=7, step=0)


def test_secrets_need_128_bits_and_never_print():
    with pytest.raises(ValueError, match="128 bits"):
        sampling.RunSecret(b"short")
    s = sampling.RunSecret.generate()
    assert s.bits == 256 and s.to_bytes().hex() not in repr(s) and not s.reproducible
    assert sampling.RunSecret.from_seed(3).reproducible
    assert sampling.RunSecret.from_seed(3).to_bytes() == sampling.RunSecret.from_seed(3).to_bytes()


def test_the_secret_file_is_created_once_and_read_back(tmp_path):
    a = sampling.load_or_create_secret(str(tmp_path))
    b = sampling.load_or_create_secret(str(tmp_path))
    assert a.to_bytes() == b.to_bytes()
    assert (tmp_path / sampling.SECRET_FILE).stat().st_mode & 0o077 == 0


def test_noise_seeds_differ_per_step_and_fit_int64():
    seeds = [tuple(SECRET.noise_seed(t)) for t in range(100)]
    assert len(set(seeds)) == 100
    assert all(-2 ** 63 <= w < 2 ** 63 for s in seeds for w in s)


def test_overflow_makes_more_micro_batches_never_truncates():
    idx = np.arange(23)
    mbs = sampling.micro_batches(idx, 8)
    assert len(mbs) == 3 and all(len(i) == 8 for i, _ in mbs)
    got = np.concatenate([i[m > 0] for i, m in mbs])
    assert np.array_equal(got, idx)
    assert sum(m.sum() for _, m in mbs) == 23


def test_empty_sample_still_one_all_padding_batch():
    mbs = sampling.micro_batches(np.zeros(0, np.int64), 4)
    assert len(mbs) == 1 and mbs[0][1].sum() == 0


@pytest.mark.parametrize("q", [0.0, 1.5])
def test_bad_q(q):
    with pytest.raises(ValueError, match="sampling_probability"):
        sampling.poisson_sample(10, q, secret=SECRET, step=0)
