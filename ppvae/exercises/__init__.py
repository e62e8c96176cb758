"""Exercises a course sets on likelihoods, EM, PPCA and VAEs, each with a checker.

A checker takes a student's function and returns a :class:`Verdict`: ``correct: ...``, or a
sentence saying what is wrong ("your KL is twice the exact value (a missing 1/2?) at sigma =
0.5"). The exact answers come from oracles (closed forms, ``torch.distributions``,
scikit-learn, ``ppvae.baselines``), never from stored numbers; Monte Carlo answers are judged
within 5 standard errors of their own run-to-run spread. Reference solutions are in
:mod:`ppvae.exercises.solutions`.
"""

from ppvae.exercises import solutions
from ppvae.exercises.densities import (
    check_bernoulli_log_likelihood,
    check_gaussian_iid_log_likelihood,
    check_gaussian_log_likelihood,
    check_gaussian_mle,
    check_gaussian_sigma_log_likelihood,
    check_kl_diagonal,
    check_kl_full,
)
from ppvae.exercises.em_steps import (
    check_gmm_em_step,
    check_ppca_em_step,
    check_ppca_em_step_missing,
)
from ppvae.exercises.estimators import (
    check_gaussian_vae_elbo,
    check_reparameterized_gradient,
    check_reparameterized_sample,
    check_score_function_gradient,
)
from ppvae.exercises.marginals import (
    check_beats_ppca,
    check_importance_sampled_log_px,
    check_ppca_elbo_identity,
)
from ppvae.exercises.verdict import Verdict

CHECKERS = {
    "gaussian_mle": check_gaussian_mle,
    "gaussian_iid_log_likelihood": check_gaussian_iid_log_likelihood,
    "gmm_em_step": check_gmm_em_step,
    "gaussian_log_likelihood": check_gaussian_log_likelihood,
    "gaussian_sigma_log_likelihood": check_gaussian_sigma_log_likelihood,
    "bernoulli_log_likelihood": check_bernoulli_log_likelihood,
    "kl_diagonal": check_kl_diagonal,
    "kl_full": check_kl_full,
    "reparameterized_sample": check_reparameterized_sample,
    "gaussian_vae_elbo": check_gaussian_vae_elbo,
    "score_function_surrogate": check_score_function_gradient,
    "reparameterized_objective": check_reparameterized_gradient,
    "ppca_em_step": check_ppca_em_step,
    "ppca_em_step_missing": check_ppca_em_step_missing,
    "importance_sampled_log_px": check_importance_sampled_log_px,
    "ppca_elbo": check_ppca_elbo_identity,
}
"""Each checker under the name of the solution it checks (``solutions.<name>``)."""

__all__ = [
    "CHECKERS",
    "Verdict",
    "check_beats_ppca",
    "solutions",
    *sorted(c.__name__ for c in CHECKERS.values()),
]
