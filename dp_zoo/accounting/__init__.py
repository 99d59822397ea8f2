"""Privacy accounting for DP-SGD, built on Google's dp-accounting.

Every epsilon dp_zoo prints or writes comes from this package, computed for
exactly what the engine does (docs/design.md, "DP-SGD semantics"):

    SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)

under add-or-remove-one adjacency, with one example as the privacy unit.
Augmentation multiplicity does not change this: each example still
contributes one clipped gradient per step.

Two accountants are offered:

- ``"pld"``: privacy loss distributions (Koskela et al. 2020; Doroshenko et
  al. 2022). Tight up to discretisation; dp_zoo's default.
- ``"rdp"``: Rényi DP (Mironov 2017; Mironov, Talwar, Zhang 2019), with
  dp-accounting's default orders. Looser (a larger, more conservative
  epsilon); what De et al. 2022 reported.

Cost. One exact PLD epsilon takes from a fraction of a second to minutes,
growing fast as sigma shrinks (measurements in ``pld_limit``). So
``epsilon(accountant="pld")`` refuses sigma < ``PLD_MIN_NOISE_MULTIPLIER``
(use "rdp"), the ledger accounts such runs with RDP and says so in its
summary, its per-step answers (``can_step``, ``epsilon_upper``) come from a
few cached exact values (``curve``), and ``run_interruptibly`` keeps the main
thread responsive to a stop request while an accounting call runs.

Sampling. The guarantee assumes Poisson sampling: every example joins a step
independently with probability q. Fixed-size batches drawn by shuffling are
*not* covered by this analysis (its amplification by subsampling differs, and
an accountant that silently applied the Poisson bound to shuffled batches
would overstate the guarantee), so ``sampling="shuffle"`` is refused with an
error rather than accounted optimistically.

Modules: ``checks`` (argument checks), ``pld_limit`` (where PLD stops),
``events`` (the DP-SGD event and its epsilon), ``calibration`` (sigma or
steps for a budget), ``ledger`` (``PrivacyLedger``), ``curve`` (the ledger's
cached per-step answers), ``interruptible`` (``run_interruptibly``). This
package imports nothing else from dp_zoo.
"""

from dp_zoo.accounting.calibration import calibrate_noise, calibrate_steps
from dp_zoo.accounting.checks import ACCOUNTANTS, SAMPLINGS, check_delta_for_dataset
from dp_zoo.accounting.events import (
    ADJACENCY,
    DEFAULT_PLD_DISCRETIZATION,
    PRIVACY_UNIT,
    dp_accounting_version,
    dp_sgd_event,
    dp_sgd_runs_event,
    epsilon,
    make_accountant,
)
from dp_zoo.accounting.interruptible import AccountingInterrupted, run_interruptibly
from dp_zoo.accounting.ledger import BudgetExceededError, PrivacyLedger
from dp_zoo.accounting.pld_limit import PLD_MIN_NOISE_MULTIPLIER

__all__ = [
    "ACCOUNTANTS",
    "ADJACENCY",
    "DEFAULT_PLD_DISCRETIZATION",
    "PLD_MIN_NOISE_MULTIPLIER",
    "PRIVACY_UNIT",
    "SAMPLINGS",
    "AccountingInterrupted",
    "BudgetExceededError",
    "PrivacyLedger",
    "calibrate_noise",
    "calibrate_steps",
    "check_delta_for_dataset",
    "dp_accounting_version",
    "dp_sgd_event",
    "dp_sgd_runs_event",
    "epsilon",
    "make_accountant",
    "run_interruptibly",
]
