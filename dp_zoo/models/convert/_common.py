"""Helpers every weight converter shares: arrays from any framework, error lists."""

import numpy as np


def to_numpy(t):
    """``t`` (a torch tensor, JAX or numpy array, Python scalar) as a numpy array."""
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def identity(a):
    """The layout conversion of a weight stored alike on both sides."""
    return a


def listed(items, limit, sep=", "):
    """The first ``limit`` of ``items`` joined by ``sep``, with " ..." when some are left out."""
    return sep.join(items[:limit]) + (" ..." if len(items) > limit else "")
