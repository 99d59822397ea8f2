"""Audit canaries: random-noise images with random labels, their scores and the guesses.

Each canary is included in training with probability 1/2; after training
the k highest-scoring canaries are guessed "in", the k lowest "out".
"""

import numpy as np


def make_canaries(m, image_shape, num_classes, seed):
    """m uniform-noise uint8 images with uniformly random labels, and the inclusion coins.

    Args:
      m: number of canaries.
      image_shape: ``(H, W, C)``.
      num_classes: labels are drawn from ``range(num_classes)``.
      seed: int; the images/labels and the coins come from separate streams.

    Returns:
      ``(images uint8 [m, H, W, C], labels int64 [m], included bool [m])``
      where each ``included[i]`` is an independent fair coin.
    """
    if m < 2:
        raise ValueError(f"need at least 2 canaries, got {m}.")
    canary_rng, coin_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    images = canary_rng.integers(0, 256, size=(m,) + tuple(image_shape), dtype=np.uint8)
    labels = canary_rng.integers(0, num_classes, size=m).astype(np.int64)
    included = coin_rng.random(m) < 0.5
    return images, labels, included


def score_canaries(model, images, labels, mean, std, batch_size=512):
    """Log-probability of each canary's label (higher: more likely trained on)."""
    import tensorflow as tf

    from dp_zoo import preprocessing

    out = []
    for i in range(0, len(labels), batch_size):
        x = preprocessing.normalize(images[i:i + batch_size], mean, std)
        logp = tf.nn.log_softmax(model(x, training=False), axis=-1).numpy()
        out.append(logp[np.arange(len(x)), labels[i:i + batch_size]])
    return np.concatenate(out).astype(np.float64)


def guesses_from_scores(scores, k):
    """+1 ("included") for the k highest scores, -1 for the k lowest, 0 otherwise.

    k is fixed before the scores are seen (see the module docstring).
    """
    scores = np.asarray(scores)
    if not 1 <= 2 * k <= len(scores):
        raise ValueError(f"k={k} guesses per side need 2k <= m={len(scores)} and k >= 1.")
    # Ties broken by index (stable sort): the scores are floats, ties are rare
    # and this choice does not depend on the inclusion coins.
    order = np.argsort(-scores, kind="stable")
    g = np.zeros(len(scores), dtype=np.int64)
    g[order[:k]] = 1
    g[order[len(scores) - k:]] = -1
    return g


def count_correct(guesses, included):
    """``(r, v)``: guesses made and guesses that match the inclusion coins."""
    guesses = np.asarray(guesses)
    truth = np.where(np.asarray(included), 1, -1)
    r = int(np.count_nonzero(guesses))
    v = int(np.sum(guesses == truth))  # abstentions (0) never match
    return r, v
