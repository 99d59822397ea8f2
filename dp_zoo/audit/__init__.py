"""Empirical privacy audit with one training run (Steinke, Nasr, Jagielski 2023).

"Privacy Auditing with One (1) Training Run" (NeurIPS 2023, arXiv 2305.08846):
insert m canaries into the training set, each independently with probability
1/2; train ONCE with the real engine; score every canary on the trained
model; guess "included" for the k best-scoring canaries and "excluded" for
the k worst (abstaining on the rest); and turn the number v of correct
guesses among the r = 2k made into a lower bound on epsilon that holds with
probability >= 1 - beta (the confidence). Their analysis (the canaries'
independent inclusion plus the connection between DP and generalization)
makes one run enough, without paying for group privacy.

The bound (their §5 and Appendix D; implemented here from the statement).
If the training algorithm is (eps, delta)-DP, the number W of correct guesses
satisfies, with B ~ Binomial(r, e^eps / (1 + e^eps)),

    P[W >= v] <= P[B >= v] + 2 m delta * max_{1 <= i <= v} P[v - i <= B < v] / i.

The right side is a p-value for the hypothesis "the algorithm is
(eps, delta)-DP". Every eps whose p-value is <= beta is rejected; the
reported lower bound is the smallest eps that is NOT rejected, so every
eps below it is rejected at level beta (``epsilon_lower_bound``).

Canaries (why these). Black-box input-space canaries: images of uniform
random noise (nothing like a digit) with uniformly random labels, scored
by the log-probability the trained model gives the canary's label.
- They go through the unmodified engine as ordinary training examples
  (sampling, clipping, noise, averaging all exactly as in a real run), so
  the audit tests the real code path, not a model of it.
- They are out of distribution: the real data teaches the model nothing
  about a noise image's random label, so an EXCLUDED canary's score is
  that of a guess, and only the canary's own inclusion can raise it.
  (Mislabelled real digits would instead fight the real data.)
- Gradient ("white-box Dirac") canaries would be stronger but need a hook
  inside the engine's per-example gradients; input-space canaries need none.
- Measured on digits with a tiny WRN (``audit_small`` preset, 200 canaries,
  300 steps): with the noise turned off every one of the 100 guesses is
  right; with DP at eps=2 the guesses are near chance.

The number of guesses k (per side) is fixed before training
(``guess_fraction`` of m); choosing it after looking at the scores would
void the confidence statement. The default fraction (1/4 per side) was
chosen on development runs with other seeds than the tests use.

Deliberately non-private engine (``noise=False``): the real engine with
the noise standard deviation forced to 0 and everything else (Poisson
sampling, per-example clipping, division by the expected batch size) kept.
It exists only to show that the audit has power; its result says
"noise disabled: NOT private" and carries no accountant epsilon.

The ``audit_small`` preset runs with ``deterministic=True`` (reproducible
audits: the guesser never reads the seed), so by dp_zoo's definition the
audited run is NOT private (docs/privacy.md, "Reproducible runs are not
private"): its result has ``private`` False, a status that says so, and
the accountant's epsilon labelled nominal. A recipe's audit keys its run by
a secret, as the recipe does.

Caveat on the accountant. The engine sets q = B / N with N the training
set size, so q moves slightly with the number of included canaries (by
well under 1% for the presets); the accountant's epsilon is the one for
the run's actual q.

Modules: ``bounds`` (the statistics), ``canaries`` (make, score, guess,
count), ``run`` (``run_audit``, the configurations, ``attach_to_record``),
``__main__`` (``python -m dp_zoo.audit``).
"""

from dp_zoo.audit.bounds import epsilon_lower_bound, p_value
from dp_zoo.audit.canaries import count_correct, guesses_from_scores, make_canaries, score_canaries
from dp_zoo.audit.run import (AUDIT_SMALL, AUDIT_SMALL_TRAIN_SIZE, CANARY_KIND, METHOD, NOT_PRIVATE_BANNER,
                              SCORE_KIND, AuditResult, attach_to_record, audit_small_config, load_train,
                              resolve_config, run_audit)

__all__ = ["AUDIT_SMALL", "AUDIT_SMALL_TRAIN_SIZE", "CANARY_KIND", "METHOD", "NOT_PRIVATE_BANNER", "SCORE_KIND",
           "AuditResult", "attach_to_record", "audit_small_config", "count_correct", "epsilon_lower_bound",
           "guesses_from_scores", "load_train", "make_canaries", "p_value", "resolve_config", "run_audit",
           "score_canaries"]
