"""Poisson sampling and the run's secret randomness (docs/privacy.md).

Each example joins step t independently with probability q (what the
accountant assumes). The sampled indices are split into micro-batches of a
fixed physical size; the last one is padded with masked rows. A sampled batch
larger than expected simply yields more micro-batches: nothing is ever
truncated (truncation would change the sampling distribution and void the
guarantee). An empty sample yields one all-padding micro-batch, so the step
still happens and its noise is still added.

Batch selection and noise are secret randomness of the mechanism: an
attacker who could recompute which steps an example joined would lose the
amplification by subsampling the accountant credits (for the digits models,
epsilon about 18 instead of 8 for the median example). Both are therefore
keyed by a ``RunSecret`` of 256 bits from OS entropy, which is never derived
from the public seed and never written to the run record or the card; it
lives only in the run directory, so that a resumed run replays its batches.
Only an explicit reproducible run (``RunSecret.from_seed``) derives it from
the seed, and such a run is published as NOT differentially private.
"""

import hashlib
import hmac
import os
import secrets

import numpy as np

SECRET_BYTES = 32
SECRET_FILE = "run_secret.bin"


class RunSecret:
    """The secret key of one run's batch selection and noise.

    Per-step values are derived with HMAC-SHA256 under separate labels, so
    the sampling stream and the noise stream are independent and neither
    reveals the key.

    Args:
      key: at least 16 bytes (``SECRET_BYTES`` = 32 from ``generate``).
      reproducible: True when the key was derived from a public seed.
    """

    def __init__(self, key, *, reproducible=False):
        key = bytes(key)
        if len(key) < 16:
            raise ValueError(f"a run secret needs at least 128 bits, got {8 * len(key)}.")
        self._key = key
        self.reproducible = bool(reproducible)

    @classmethod
    def generate(cls):
        """A fresh secret from the operating system's entropy source."""
        return cls(secrets.token_bytes(SECRET_BYTES))

    @classmethod
    def from_seed(cls, seed):
        """The reproducible-run key: a public function of ``seed`` (NOT private)."""
        return cls(hashlib.sha256(f"dp_zoo reproducible run, seed {int(seed)}".encode()).digest(),
                   reproducible=True)

    @property
    def bits(self):
        return 8 * len(self._key)

    def to_bytes(self):
        return self._key

    def fingerprint(self):
        """A short public identifier (a hash: reveals nothing usable about the key)."""
        return hashlib.sha256(b"dp_zoo fingerprint" + self._key).hexdigest()[:16]

    def _derive(self, label, step):
        return hmac.new(self._key, f"{label}:{int(step)}".encode(), hashlib.sha256).digest()

    def sampling_rng(self, step):
        """The numpy generator that draws step ``step``'s sample (256-bit seed)."""
        seed = int.from_bytes(self._derive("sampling", step), "little")
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, pool_size=8)))

    def noise_seed(self, step):
        """Two int64 words: the stateless (Philox) seed of step ``step``'s noise."""
        d = self._derive("noise", step)
        return [int.from_bytes(d[i:i + 8], "little", signed=True) for i in (0, 8)]

    def __repr__(self):  # never print the key
        return f"RunSecret({self.bits} bits{', reproducible' if self.reproducible else ''})"


def load_or_create_secret(run_dir):
    """The secret stored in ``run_dir`` (created there, owner-only, if absent).

    With ``run_dir`` None the secret lives only in memory.
    """
    if run_dir is None:
        return RunSecret.generate()
    path = os.path.join(run_dir, SECRET_FILE)
    if os.path.exists(path):
        with open(path, "rb") as f:
            return RunSecret(f.read())
    return create_secret(run_dir)


def create_secret(run_dir):
    """A new secret, written to ``run_dir`` (owner-only) in place of any earlier one."""
    path = os.path.join(run_dir, SECRET_FILE)
    secret = RunSecret.generate()
    os.makedirs(run_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret.to_bytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return secret


def poisson_sample(dataset_size, sampling_probability, *, secret, step):
    """Indices of the examples that join step ``step`` (sorted int64).

    Args:
      secret: the run's ``RunSecret``.
    """
    if not 0 < sampling_probability <= 1:
        raise ValueError(f"sampling_probability must be in (0, 1], got {sampling_probability}.")
    if not isinstance(secret, RunSecret):
        raise TypeError("poisson_sample needs the run's RunSecret (batch selection is secret randomness).")
    return np.flatnonzero(secret.sampling_rng(step).random(dataset_size) < sampling_probability)


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


class PoissonSampler:
    """Step ``t``'s micro-batches for a data set of ``dataset_size`` examples.

    The engine, the streaming prefetcher and ``make_private`` all draw
    through one of these, so they agree on every batch.
    """

    def __init__(self, dataset_size, sampling_probability, secret, physical_batch_size):
        self.dataset_size = int(dataset_size)
        self.q = float(sampling_probability)
        self.secret = secret
        self.physical_batch_size = int(physical_batch_size)

    def indices(self, step):
        return poisson_sample(self.dataset_size, self.q, secret=self.secret, step=step)

    def micro_batches(self, step):
        return micro_batches(self.indices(step), self.physical_batch_size)
