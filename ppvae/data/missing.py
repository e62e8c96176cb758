"""Data with missing entries: NaN marks an entry that is not observed.

ppvae's convention is the NaN form: one float tensor ``x`` (N, D) whose missing entries are NaN.
An explicit mask (boolean, True = observed) is accepted wherever a user supplies one, and
:func:`with_missing` turns ``(x, mask)`` into the NaN form. Models that score only the observed
entries declare ``accepts_missing = True`` (ppvae's :class:`~ppvae.models.VAE` does), so
``fit``, ``evaluate`` and ``check`` let NaN through for them; every row still needs an observed
entry, and Inf is still rejected.

Bad input raises :class:`~ppvae.data.DataError` with a one-line message.
"""

import math

import torch
from torch import Tensor

from ppvae.data import DataError, Dataset, check_rows_observed, validate_data

__all__ = [
    "check_mask",
    "mcar_dataset",
    "mcar_mask",
    "observed",
    "validate_missing",
    "with_missing",
]


def mcar_mask(
    shape: tuple[int, int], rate: float, generator: torch.Generator | None = None
) -> Tensor:
    """A mask of entries missing completely at random (MCAR), True = observed.

    Each entry is missing independently with probability ``rate``; then each row left with
    nothing observed has one entry, chosen uniformly, observed again. An entry is therefore
    observed with probability ``(1 - rate) + rate^D / D``, a hair above ``1 - rate`` for
    small D (0.5417 rather than 0.5 at D = 3, rate = 0.5).

    Parameters
    ----------
    shape : tuple of int
        (N, D).
    rate : float
        The probability that an entry is missing, in [0, 1).
    generator : torch.Generator, optional
        Seeds the draws; the mask is on its device (the CPU without one).

    Returns
    -------
    BoolTensor, shape (N, D)

    Examples
    --------
    >>> mask = mcar_mask((4, 3), 0.5, torch.Generator().manual_seed(0))
    >>> mask.shape, bool(mask.any(1).all())
    (torch.Size([4, 3]), True)
    """
    if not 0 <= rate < 1:
        raise DataError(f"the missing rate must lie in [0, 1), got {rate}")
    n, d = shape
    if n < 1 or d < 1:
        raise DataError(f"mcar_mask needs a shape (N, D) with N, D >= 1, got {tuple(shape)}")
    device = "cpu" if generator is None else generator.device
    mask = torch.rand(n, d, generator=generator, device=device) >= rate
    pick = torch.randint(d, (n,), generator=generator, device=device)
    empty = ~mask.any(1)
    mask[empty, pick[empty]] = True
    return mask


def check_mask(x: Tensor, mask: Tensor, what: str = "data") -> None:
    """Raise :class:`~ppvae.data.DataError` unless ``mask`` is a boolean tensor of ``x``'s
    shape with an observed (True) entry in every row.

    Examples
    --------
    >>> check_mask(torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))
    Traceback (most recent call last):
    ...
    ppvae.errors.DataError: the mask has shape (2, 2) but data has shape (2, 3)
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        kind = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise DataError(f"the mask must be a boolean tensor (True = observed), got {kind}")
    if mask.shape != x.shape:
        raise DataError(
            f"the mask has shape {tuple(mask.shape)} but {what} has shape {tuple(x.shape)}"
        )
    check_rows_observed(~mask, what)


def with_missing(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` (N, D) with NaN where ``mask`` (bool, True = observed) is False: the NaN form.

    Entries that are NaN in ``x`` stay NaN. Raises DataError for a mask of the wrong shape or
    dtype, or one that leaves a row with nothing observed.

    Examples
    --------
    >>> with_missing(torch.ones(2, 2), torch.tensor([[True, False], [True, True]]))
    tensor([[1., nan],
            [1., 1.]])
    """
    check_mask(x, mask)
    return x.masked_fill(~mask, math.nan)


def observed(x: Tensor) -> tuple[Tensor, Tensor]:
    """(zero-filled ``x``, mask): NaN entries set to 0, and True where ``x`` is observed.

    What a model scores and an encoder reads; no host synchronization, so it runs in every
    training step.

    Examples
    --------
    >>> observed(torch.tensor([[0.5, float("nan")]]))
    (tensor([[0.5000, 0.0000]]), tensor([[ True, False]]))
    """
    mask = ~x.isnan()
    return x.where(mask, 0.0), mask


def validate_missing(
    x: Tensor, mask: Tensor | None = None, *, unit_interval: bool = False, what: str = "data"
) -> Tensor:
    """``x`` in the NaN form after checking it: (N, D), floating, no Inf, every row observed.

    Parameters
    ----------
    x : Tensor, shape (N, D)
        Data, NaN at missing entries.
    mask : BoolTensor, shape (N, D), optional
        True = observed; entries where it is False become NaN.
    unit_interval : bool
        Require the observed entries to lie in [0, 1].
    what : str
        How to name ``x`` in messages.

    Returns
    -------
    Tensor, shape (N, D)
    """
    x = validate_data(x, unit_interval=unit_interval, missing=True, what=what)
    if mask is None:
        return x
    check_mask(x, mask, what)
    x = x.masked_fill(~mask, math.nan)
    check_rows_observed(x.isnan(), what)  # NaN in x and the mask's gaps together
    return x


def mcar_split(train: Tensor, test: Tensor, rate: float, seed: int = 0):
    """``train`` and ``test`` with entries missing completely at random (:func:`mcar_mask`):
    the train mask drawn first, then the test mask, from one generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(
        with_missing(x, mcar_mask(x.shape, rate, generator).to(x.device)) for x in (train, test)
    )


def mcar_dataset(data: Dataset, rate: float, *, seed: int = 0) -> Dataset:
    """A copy of ``data`` with entries of train and test missing completely at random
    (:func:`mcar_split`); keep ``data`` itself to score imputations against.

    Examples
    --------
    >>> from ppvae.data import load_dataset
    >>> masked = mcar_dataset(load_dataset("digits"), 0.25)
    >>> round(masked.train.isnan().float().mean().item(), 2)
    0.25
    """
    train, test = mcar_split(data.train, data.test, rate, seed)
    return data._replace(train=train, test=test)
