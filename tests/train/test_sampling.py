"""Poisson sampling: statistics, static shapes, no truncation, reproducibility."""

import numpy as np
import pytest

from dp_zoo.train import sampling


def test_inclusion_frequency_matches_q():
    n, q = 2000, 0.05
    counts = np.zeros(n)
    sizes = []
    for t in range(200):
        idx = sampling.poisson_sample(n, q, seed=7, step=t)
        counts[idx] += 1
        sizes.append(len(idx))
    assert abs(np.mean(sizes) - n * q) < 3 * np.sqrt(n * q * (1 - q) / 200) * 3
    assert abs(counts.mean() / 200 - q) < 0.005
    # Batch sizes really vary (Poisson, not fixed-size).
    assert np.std(sizes) > 3


def test_same_seed_and_step_same_sample():
    a = sampling.poisson_sample(1000, 0.1, seed=1, step=5)
    assert np.array_equal(a, sampling.poisson_sample(1000, 0.1, seed=1, step=5))
    assert not np.array_equal(a, sampling.poisson_sample(1000, 0.1, seed=1, step=6))


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
        sampling.poisson_sample(10, q, seed=0, step=0)
