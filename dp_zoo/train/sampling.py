"""Poisson sampling with static shapes.

Each example joins step t independently with probability q (what the
accountant assumes). The sampled indices are split into micro-batches of a
fixed physical size; the last one is padded with masked rows. A sampled batch
larger than expected simply yields more micro-batches: nothing is ever
truncated (truncation would change the sampling distribution and void the
guarantee). An empty sample yields one all-padding micro-batch, so the step
still happens and its noise is still added.

The sample for step t depends only on (seed, t): a resumed run draws exactly
the batches an uninterrupted one would.
"""

import numpy as np


def poisson_sample(dataset_size, sampling_probability, *, seed, step):
    """Indices of the examples that join step ``step`` (sorted int64)."""
    if not 0 < sampling_probability <= 1:
        raise ValueError(f"sampling_probability must be in (0, 1], got {sampling_probability}.")
    rng = np.random.default_rng([int(seed), int(step), 0x5EED])
    return np.flatnonzero(rng.random(dataset_size) < sampling_probability)


def micro_batches(indices, physical_batch_size):
    """Splits indices into fixed-size ``(indices, mask)`` micro-batches.

    Returns:
      list of ``(idx [P] int64, mask [P] float32)``; padded rows have index
      0 and mask 0. Never empty.
    """
    p = int(physical_batch_size)
    if p < 1:
        raise ValueError(f"physical_batch_size must be >= 1, got {physical_batch_size}.")
    n = len(indices)
    chunks = max(1, -(-n // p))
    out = []
    for c in range(chunks):
        part = indices[c * p:(c + 1) * p]
        idx = np.zeros(p, np.int64)
        mask = np.zeros(p, np.float32)
        idx[: len(part)] = part
        mask[: len(part)] = 1.0
        out.append((idx, mask))
    return out
