"""Transforms of pixel data: binarization (static, sampled, dynamic) for Bernoulli likelihoods
and uniform dequantization for densities on continuous data."""

import torch
from torch import Tensor

from ppvae.data.dataset import Dataset


def binarize_sample(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``Bernoulli(x)`` entrywise: one stochastic binarization of data in [0, 1].

    Returns a tensor of 0s and 1s with the shape, dtype and device of ``x``; missing entries
    (NaN) stay NaN.

    Examples
    --------
    >>> binarize_sample(torch.tensor([[0.0, 1.0, float("nan")]]))
    tensor([[0., 1., nan]])
    """
    observed = ~x.isnan()
    return torch.bernoulli(x.where(observed, 0.0), generator=generator).where(observed, x)


def dequantize(x: Tensor, generator: torch.Generator | None = None, levels: int = 256) -> Tensor:
    """Uniformly dequantize data in [0, 1] with ``levels`` grey levels.

    Returns ``(k + u) / levels`` where ``k = x * (levels - 1)`` is the grey level and
    ``u ~ U[0, 1)``, so grey level ``k`` is spread over ``[k / levels, (k + 1) / levels)``.

    Examples
    --------
    >>> x = torch.tensor([[0.0, 1.0]])
    >>> bool(((dequantize(x) * 256).floor() == x * 255).all())
    True
    """
    # Rounding undoes the float error of k / 255 * 255, which would otherwise drop k by one.
    k = torch.round(x * (levels - 1))
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    # k + u can round up to k + 1 in float32; keep every value strictly below its next level.
    upper = torch.nextafter((k + 1) / levels, torch.zeros_like(x))
    return torch.minimum((k + u) / levels, upper)


def _threshold(x: Tensor) -> Tensor:
    return (x > 0.5).to(x.dtype)


def _binarize_none(data: Dataset, generator: torch.Generator) -> Dataset:
    return data


def _binarize_static(data: Dataset, generator: torch.Generator) -> Dataset:
    return data._replace(train=_threshold(data.train), test=_threshold(data.test))


def _binarize_static_sample(data: Dataset, generator: torch.Generator) -> Dataset:
    # The test set is drawn first, so "static-sample" and "dynamic" share it for a given seed.
    test = binarize_sample(data.test, generator)
    return data._replace(train=binarize_sample(data.train, generator), test=test)


def _binarize_dynamic(data: Dataset, generator: torch.Generator) -> Dataset:
    return data._replace(test=binarize_sample(data.test, generator), dynamic=True)


BINARIZERS = {
    "none": _binarize_none,
    "static": _binarize_static,
    "static-sample": _binarize_static_sample,
    "dynamic": _binarize_dynamic,
}


#: The names of the binarizations (``--binarize``).
BINARIZATIONS: tuple[str, ...] = tuple(BINARIZERS)
