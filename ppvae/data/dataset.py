"""The :class:`Dataset` (flat float32 train and test tensors) and the checks every tensor of
data passes before a model sees it: shape, dtype, finite values, [0, 1] where a likelihood needs
it, NaN only where a model accepts missing entries."""

import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from ppvae.data.rows import Rows, as_rows
from ppvae.errors import DataError, shown

NAN_HINT = (
    "; NaN marks a missing entry only for a model with accepts_missing (ppvae's VAE models "
    "built with missing=True, or DataShape(..., missing=True)) and a guide that reads the "
    "mask (GUIDES['masked-diag'])"
)


class Dataset(NamedTuple):
    """A train/test pair of flat float32 data sets.

    Attributes
    ----------
    name : str
    train, test : Tensor
        ``(N, D)`` and ``(M, D)`` float32, one example per row; or, for a model that takes
        more than x, a tuple of tensors (``model(*batch)``) or a dict of tensors
        (``model(**batch)``) with one row per example each (:mod:`ppvae.data.rows`), such as
        ``(data.train, one_hot(data.train_labels))``.
    image_shape : tuple of int or None
        ``(C, H, W)`` of one image (``C * H * W == D``), or None for non-image data.
    train_labels, test_labels : Tensor or None
        ``(N,)`` and ``(M,)`` int64 class labels.
    dynamic : bool
        True when the training loop must re-binarize ``train`` every epoch with
        :func:`binarize_sample` (the IWAE protocol).
    params : dict of str to Tensor or None
        The true generating parameters (float64), for synthetic data only.

    Examples
    --------
    >>> from ppvae.data import load_dataset
    >>> data = load_dataset("digits")
    >>> data.train.shape, data.test.shape, data.image_shape
    (torch.Size([1437, 64]), torch.Size([360, 64]), (1, 8, 8))
    """

    name: str
    train: Tensor
    test: Tensor
    image_shape: tuple[int, int, int] | None
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    dynamic: bool = False
    params: dict[str, Tensor] | None = None


HALF_PRECISION = (torch.float16, torch.bfloat16)
"""Dtypes that data is upcast from (to float32, with a note): a log-density summed over a row
overflows float16 at the first step, and bfloat16 keeps 3 significant digits."""


def validate_data(
    x: Tensor, *, unit_interval: bool = False, missing: bool = False, what: str = "data"
) -> Tensor:
    """``x``, after raising :class:`DataError` unless it is a finite, non-empty ``(N, D)``
    float tensor; float16 and bfloat16 data comes back as float32, with a warning that says so.

    Parameters
    ----------
    x : Tensor
        ``(N, D)`` data, one example per row.
    unit_interval : bool
        Also require every entry to lie in [0, 1], as Bernoulli-type decoders do.
    missing : bool
        Accept NaN as a missing entry (for a model with ``accepts_missing``), as long as every
        row has an observed entry; the other checks then apply to the observed entries.
    what : str
        How to name ``x`` in the message.

    Returns
    -------
    Tensor, shape (N, D)
        ``x`` itself, or a float32 copy of half-precision data.

    Examples
    --------
    >>> validate_data(torch.zeros(3, 2, 2))
    Traceback (most recent call last):
    ...
    ppvae.errors.DataError: data must be 2-D (N, D) with one example per row, got shape \
(3, 2, 2); flatten images to (N, C*H*W) first
    """
    x = as_rows(x, what)
    if isinstance(x, Rows):
        return _validate_rows(x, unit_interval, missing, what)
    if not isinstance(x, Tensor):
        raise DataError(
            f"{what} must be a torch.Tensor, got {type(x).__name__}; "
            "convert it with torch.as_tensor(x, dtype=torch.float32)"
        )
    if x.dim() != 2:
        raise DataError(
            f"{what} must be 2-D (N, D) with one example per row, got shape {tuple(x.shape)}; "
            "flatten images to (N, C*H*W) first"
        )
    if x.numel() == 0:
        raise DataError(f"{what} is empty (shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise DataError(f"{what} must have a floating dtype, got {x.dtype}; use x.float()")
    x = _upcast(x, what)
    _check_values(x, what, unit_interval, missing)
    return x


def _validate_rows(rows: Rows, unit_interval: bool, missing: bool, what: str) -> Rows:
    """Each tensor of ``rows`` checked: floating ones finite but for rows that are all NaN (not
    observed) and, with ``missing``, NaN entries; ``unit_interval`` applies to the first."""
    checked = []
    unobserved = rows.unobserved()
    for k, (name, t) in enumerate(zip(rows.names, rows.tensors, strict=True)):
        label = f"{what} ({name})"
        if t.numel() == 0:
            raise DataError(f"{label} is empty (shape {tuple(t.shape)})")
        if t.is_floating_point():
            t = _upcast(t, label)
            seen = t[~unobserved[:, k]].reshape(-1, max(1, t[:1].numel()))
            if seen.numel():
                _check_values(seen, label, unit_interval and k == 0, missing)
        checked.append(t)
    if bool(unobserved.all(1).any()):
        row = int(unobserved.all(1).nonzero()[0])
        raise DataError(f"{what}: row {row} has no argument observed (every tensor is all NaN)")
    return rows.map(lambda t: checked.pop(0))


def _upcast(x: Tensor, what: str) -> Tensor:
    if x.dtype not in HALF_PRECISION:
        return x
    warnings.warn(
        f"{what} is {x.dtype}: ppvae upcasts it to torch.float32, since log-densities in half "
        "precision overflow (pass x.float() to skip this note)",
        stacklevel=3,
    )
    return x.float()


def _check_values(x: Tensor, what: str, unit_interval: bool, missing: bool = False) -> None:
    lo, hi = (float(v) for v in x.aminmax())
    # min and max propagate NaN and Inf, so one fast pass suffices unless there is a problem.
    if not (math.isfinite(lo) and math.isfinite(hi)):
        nan = x.isnan()
        n_nan, n_inf = int(torch.count_nonzero(nan)), int(torch.count_nonzero(x.isinf()))
        if n_inf or not missing:
            hint = "" if n_inf or not n_nan else NAN_HINT
            raise DataError(
                f"{what} has {n_nan} NaN and {n_inf} Inf entries (of {x.numel()}){hint}"
            )
        check_rows_observed(nan, what)
        lo, hi = (float(v) for v in x[~nan].aminmax())
    if unit_interval and (lo < 0 or hi > 1):
        raise DataError(
            f"{what} must lie in [0, 1] for Bernoulli-type decoders, found min {lo:.4g} and "
            f"max {hi:.4g}; rescale it (pixels / 255) or use a Gaussian decoder"
        )


def check_rows_observed(nan: Tensor, what: str = "data") -> None:
    """Raise :class:`DataError` if a row of the (N, D) boolean ``nan`` (True = missing) is all
    missing: a row with nothing observed has no likelihood to learn from or condition on.

    Examples
    --------
    >>> check_rows_observed(torch.tensor([[False, True], [True, True]]))
    Traceback (most recent call last):
    ...
    ppvae.errors.DataError: data has 1 row with nothing observed (all NaN), the first is row 1; \
drop it: every row needs an observed entry
    """
    empty = nan.all(-1).nonzero().flatten()
    if len(empty):
        rows = "1 row" if len(empty) == 1 else f"{len(empty)} rows"
        raise DataError(
            f"{what} has {rows} with nothing observed (all NaN), the first is row "
            f"{int(empty[0])}; drop {'it' if len(empty) == 1 else 'them'}: every row needs an "
            "observed entry"
        )


def choose(choices: dict, key: str, what: str):
    """``choices[key]``, or a one-line DataError naming the choices."""
    if key not in choices:
        raise DataError(f"unknown {what} {shown(key)}; choose one of: {', '.join(choices)}")
    return choices[key]
