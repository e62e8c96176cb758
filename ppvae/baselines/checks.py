"""Input checks for the baselines: one-line errors that say what is wrong.

Data that is not what a baseline needs raises :class:`~ppvae.data.DataError`; a
hyper-parameter or parameter that cannot be used raises :class:`~ppvae.config.ConfigError`.
Both are ValueError subclasses.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ppvae.config import ConfigError
from ppvae.data import DataError


def check_count(name: str, value, low: int = 1) -> int:
    """``value`` as an int; raise ConfigError unless it is an integer ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def check_nonnegative(name: str, value) -> float:
    """``value`` as a float; raise ConfigError unless it is finite and ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
        raise ConfigError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def check_data(X: Tensor, q: int, *, allow_nan: bool = False) -> None:
    """Raise for data that PPCA with ``q`` components cannot be fitted to.

    ``X`` must be (N, d) with ``N >= 2``, finite except for NaN where ``allow_nan``, and
    ``1 <= q < d``.
    """
    if X.ndim != 2:
        raise DataError(f"X must be 2-D with shape (N, d); got shape {tuple(X.shape)}")
    N, d = X.shape
    if N < 2:
        raise DataError(f"PPCA needs at least 2 rows; got N={N}")
    if isinstance(q, bool) or not isinstance(q, numbers.Integral) or not 1 <= q < d:
        raise ConfigError(
            f"the number of components q must satisfy 1 <= q < d; got q={q!r}, d={d}"
        )
    if torch.isinf(X).any():
        raise DataError("X has infinite entries")
    if not allow_nan and torch.isnan(X).any():
        raise DataError(
            "X has NaN entries; for missing data use ppca_em_missing (or EMPPCA), "
            "which runs exact EM on the observed entries"
        )


def check_params(W: Tensor, mu: Tensor, sigma2: Tensor, X: Tensor | None = None) -> None:
    """Raise unless ``W`` (..., d, q), ``mu`` (..., d) and ``sigma2 > 0`` fit data ``X`` (..., d).

    Bad parameters raise ConfigError; data whose last dimension is not ``d`` raises DataError.
    """
    if W.ndim < 2:
        raise ConfigError(f"W must have shape (d, q); got shape {tuple(W.shape)}")
    d = W.shape[-2]
    if mu.shape[-1:] != (d,):
        raise ConfigError(
            f"mu must have d={d} entries to match W of shape {tuple(W.shape)}; "
            f"got shape {tuple(mu.shape)}"
        )
    if not bool((sigma2 > 0).all()):
        raise ConfigError(f"sigma2 must be > 0; got {sigma2.min().item():g}")
    if X is not None and (X.ndim == 0 or X.shape[-1] != d):
        raise DataError(
            f"X has {X.shape[-1] if X.ndim else 0} columns but the parameters have d={d} "
            f"(W has shape {tuple(W.shape)})"
        )


def check_missing_data(X: Tensor, d: int) -> None:
    """Raise DataError unless ``X`` is (N, d) with NaN at missing entries and no infinities."""
    if X.ndim != 2 or X.shape[1] != d:
        raise DataError(f"X must have shape (N, {d}); got shape {tuple(X.shape)}")
    if torch.isinf(X).any():
        raise DataError("X has infinite entries; mark missing entries with NaN")


def check_mask(mask: Tensor, shape: torch.Size, name: str = "mask") -> None:
    """Raise DataError unless ``mask`` has the data's ``shape``."""
    if tuple(mask.shape) != tuple(shape):
        raise DataError(
            f"{name} has shape {tuple(mask.shape)} but the data have shape {tuple(shape)}"
        )


def check_noise_variance(sigma2: Tensor, total_variance: Tensor, q: int) -> None:
    """Raise DataError when the maximum-likelihood noise variance ``sigma2`` of PPCA with ``q``
    components is 0 up to round-off (relative to ``total_variance``, the trace of the
    covariance): the data lie in a q-dimensional affine subspace and the likelihood is
    unbounded, so any fit, closed form or EM, runs sigma2 down to 0."""
    if sigma2 <= torch.finfo(sigma2.dtype).eps * total_variance:
        raise DataError(
            f"the data lie (numerically) in a {q}-dimensional affine subspace, so the noise "
            "variance sigma2 is 0 and the likelihood is unbounded; use fewer components"
        )


def check_not_degenerate(Xc: Tensor, q: int) -> None:
    """:func:`check_noise_variance` for centred data ``Xc`` (N, d), from the eigenvalues of the
    smaller of ``Xc Xc^T / N`` and ``Xc^T Xc / N`` (they share their nonzero eigenvalues), so a
    fit that never forms the covariance refuses what the closed form refuses."""
    N, d = Xc.shape
    gram = Xc @ Xc.mT if N <= d else Xc.mT @ Xc
    lam = torch.linalg.eigvalsh(gram / N).flip(-1).clamp_min(0)
    check_noise_variance(lam[q:].sum() / (d - q), lam.sum(), q)
