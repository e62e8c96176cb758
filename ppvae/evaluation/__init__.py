"""Evaluation: scoring a model and guide that are already trained (ELBO and its terms,
importance-sampled log p(x), active units, imputation of missing entries).

Imports from ``ppvae.pairs``, ``ppvae.baselines``, ``ppvae.data`` and the foundation modules
(``errors``, ``config``, ``nets``, ``distributed``); never from ``infer``, ``experiments`` or
``cli``.
"""

from ppvae.evaluation.bounds import elbo_terms, log_likelihood
from ppvae.evaluation.imputation import impute
from ppvae.evaluation.metrics import evaluate

__all__ = ["elbo_terms", "evaluate", "impute", "log_likelihood"]
