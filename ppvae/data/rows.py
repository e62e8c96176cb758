"""Data that is more than one tensor: :class:`Rows`, the tensors a model takes per example.

ppvae passes a model its data as ``model(x)``; a model written ``model(xs, ys=None)`` (Pyro's
semi-supervised VAE, a conditional VAE, a regression) takes several tensors. Give ``fit``,
``evaluate``, ``log_likelihood`` and ``check`` a tuple of tensors (passed positionally,
``model(*batch)``) or a dict of tensors (passed by keyword, ``model(**batch)``): they become a
:class:`Rows`, which the pipeline moves, indexes and batches as it does one tensor.

Every tensor shares its first dimension, the examples. A float tensor whose row is all NaN is
*not observed* for that example: the pair is called on such rows with that argument ``None``
(:meth:`Rows.groups`). NaN in a row that has some observed entries keeps its meaning for a
model with ``accepts_missing``: a missing entry.
"""

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ppvae.errors import DataError


class Group(NamedTuple):
    """The examples that have the same arguments observed.

    Attributes
    ----------
    present : tuple of bool
        For each tensor of the :class:`Rows` (positional ones first), whether it is observed.
    rows : LongTensor
        The examples' row numbers, in order.
    label : str
        ``"all"`` when every argument is observed, else ``"no_<name>"`` for each missing one.
    """

    present: tuple[bool, ...]
    rows: Tensor
    label: str


class Rows:
    """Tensors that share their first dimension (the examples), passed to a model together.

    Parameters
    ----------
    args : tuple of Tensor
        Passed positionally, in order.
    kwargs : dict of str to Tensor
        Passed by keyword.

    Indexing (``rows[idx]``), ``.to(...)`` and ``.repeat(k)`` act on every tensor along
    dimension 0; ``len(rows)``, ``rows.shape[0]``, ``.device`` and ``.dtype`` (the first floating
    tensor's) read as they do for one tensor, so the pipeline batches either alike.

    Examples
    --------
    >>> import torch
    >>> from ppvae.data.rows import Rows
    >>> rows = Rows((torch.zeros(4, 3),), {"ys": torch.eye(4)})
    >>> len(rows), rows[torch.tensor([0, 2])].kwargs["ys"].shape
    (4, torch.Size([2, 4]))
    >>> rows.call(lambda xs, ys=None: (xs.shape, ys.shape))
    (torch.Size([4, 3]), torch.Size([4, 4]))
    """

    def __init__(self, args: tuple[Tensor, ...] = (), kwargs: dict[str, Tensor] | None = None):
        self.args, self.kwargs = tuple(args), dict(kwargs or {})

    # --- what the pipeline reads of one tensor ---
    @property
    def tensors(self) -> list[Tensor]:
        """The tensors, positional ones first (those passed as None left out)."""
        return [t for t in (*self.args, *self.kwargs.values()) if t is not None]

    def _entries(self) -> list[tuple[str, str, Tensor]]:
        """(name in messages, short name, tensor) of each tensor not passed as None."""
        found = [(f"argument {i}", f"arg{i}", t) for i, t in enumerate(self.args)]
        found += [(k, k, v) for k, v in self.kwargs.items()]
        return [e for e in found if e[2] is not None]

    @property
    def names(self) -> list[str]:
        """How messages name each tensor: ``argument i`` (positional) or its keyword."""
        return [e[0] for e in self._entries()]

    @property
    def first(self) -> Tensor:
        """The first tensor (the one a dynamic data set re-binarizes)."""
        return self.tensors[0]

    @property
    def floating(self) -> Tensor:
        """The first floating tensor (the one whose dtype the pair's parameters take)."""
        return next((t for t in self.tensors if t.is_floating_point()), self.first)

    @property
    def shape(self) -> torch.Size:
        """(N, total features): the features of every tensor, flattened, side by side."""
        return torch.Size((len(self), sum(t[:1].numel() for t in self.tensors)))

    @property
    def device(self) -> torch.device:
        """The device of the first tensor (all are moved together)."""
        return self.first.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating tensor."""
        return self.floating.dtype

    def __len__(self) -> int:
        return self.first.shape[0]

    def __repr__(self) -> str:
        shapes = [tuple(t.shape) for t in self.args]
        named = {k: tuple(v.shape) for k, v in self.kwargs.items()}
        return f"Rows(args={shapes}, kwargs={named})"

    def map(self, fn: Callable[[Tensor], Tensor]) -> "Rows":
        """A Rows with ``fn`` applied to every tensor (an argument passed as None stays None)."""

        def each(t):
            return None if t is None else fn(t)

        return Rows(
            tuple(each(t) for t in self.args), {k: each(v) for k, v in self.kwargs.items()}
        )

    def __getitem__(self, idx) -> "Rows":
        return self.map(lambda t: t[idx])

    def to(self, *args, **kwargs) -> "Rows":
        """Every tensor moved; a dtype applies to the floating ones only (labels stay ints)."""
        dtype = kwargs.pop("dtype", None)
        devices = [a for a in args if not isinstance(a, torch.dtype)]
        dtype = next((a for a in args if isinstance(a, torch.dtype)), dtype)

        def move(t: Tensor) -> Tensor:
            t = t.to(*devices, **kwargs)
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        return self.map(move)

    def repeat(self, copies: int, *_: int) -> "Rows":
        """``copies`` stacked copies of the rows of every tensor."""
        return self.map(lambda t: t.repeat(copies, *([1] * (t.dim() - 1))))

    def new_zeros(self, *size, **kwargs) -> Tensor:
        """Zeros like the first floating tensor's (its device and dtype)."""
        return self.floating.new_zeros(*size, **kwargs)

    def new_full(self, *size, **kwargs) -> Tensor:
        """A filled tensor like the first floating tensor's (its device and dtype)."""
        return self.floating.new_full(*size, **kwargs)

    def with_first(self, first: Tensor) -> "Rows":
        """The same Rows with its first tensor replaced (dynamic binarization acts on it)."""
        tensors = [first, *self.tensors[1:]]
        k = len(self.args)
        return Rows(tuple(tensors[:k]), dict(zip(self.kwargs, tensors[k:], strict=True)))

    def call(self, fn: Callable, **extra: Any):
        """``fn(*args, **kwargs, **extra)``."""
        return fn(*self.args, **self.kwargs, **extra)

    # --- arguments that are not observed for some rows ---
    def unobserved(self) -> Tensor:
        """(N, T) bool: True where tensor t's row is all NaN (not observed for that example)."""
        columns = [
            t.reshape(len(self), -1).isnan().all(1)
            if t.is_floating_point() and t[:1].numel()
            else torch.zeros(len(self), dtype=torch.bool, device=t.device)
            for t in self.tensors
        ]
        return torch.stack(columns, 1)

    def groups(self) -> list[Group]:
        """The examples grouped by which arguments they have observed, all-observed first."""
        missing = self.unobserved().cpu()
        patterns = sorted({tuple(r) for r in missing.tolist()}, key=lambda p: (sum(p), p))
        found = []
        for pattern in patterns:
            hit = (missing == torch.tensor(pattern)).all(1).nonzero().flatten()
            names = [n for n, m in zip(self.keys(), pattern, strict=True) if m]
            label = "all" if not names else "no_" + "_".join(names)
            found.append(Group(tuple(not m for m in pattern), hit, label))
        return found

    def keys(self) -> list[str]:
        """Each tensor's short name: ``argN`` for positional ones, the keyword otherwise."""
        return [e[1] for e in self._entries()]

    def present(self, present: tuple[bool, ...]) -> "Rows":
        """These rows with the tensors that ``present`` marks False passed as None."""
        tensors = [t if p else None for t, p in zip(self.tensors, present, strict=True)]
        k = len(self.args)
        return Rows(tuple(tensors[:k]), dict(zip(self.kwargs, tensors[k:], strict=True)))


def as_rows(data, what: str = "data"):
    """A tensor as it is; a tuple/list of tensors or a dict of tensors as :class:`Rows`, checked
    to share their first dimension; anything else unchanged (validation names it)."""
    if isinstance(data, Rows):
        return data
    if isinstance(data, tuple | list):
        rows = Rows(tuple(data))
    elif isinstance(data, dict):
        rows = Rows((), data)
    else:
        return data
    _check_parts(rows, what)
    return rows


def _check_parts(rows: Rows, what: str) -> None:
    if not rows.tensors:
        raise DataError(f"{what} is an empty tuple/dict: give at least one tensor")
    for name, t in zip(rows.names, rows.tensors, strict=True):
        if not isinstance(t, Tensor):
            raise DataError(
                f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}; convert it "
                "with torch.as_tensor(...)"
            )
        if t.dim() == 0:
            raise DataError(f"{what}: {name} is a scalar; every tensor needs one row per example")
    lengths = {name: t.shape[0] for name, t in zip(rows.names, rows.tensors, strict=True)}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{n}: {k}" for n, k in lengths.items())
        raise DataError(
            f"{what}: every tensor needs the same number of rows (examples), got {shown}"
        )


def signature_problem(fn: Callable, rows: Rows, optional: tuple[bool, ...] = ()) -> str:
    """Why ``fn`` cannot be called with ``rows`` (and None for the tensors ``optional`` marks
    as sometimes unobserved), or "" when it can. ``fn``'s signature target is read as is."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return ""
    try:
        sig.bind(*rows.args, **rows.kwargs)
    except TypeError as err:
        return f"it cannot be called with this data ({err})"
    params = sig.parameters
    positional = list(params)
    names = [positional[i] if i < len(positional) else "" for i, t in enumerate(rows.args)]
    names = [n for n, t in zip(names, rows.args, strict=True) if t is not None]
    names += [k for k, v in rows.kwargs.items() if v is not None]
    for name, maybe_none in zip(names, optional or (False,) * len(names), strict=False):
        if maybe_none and name in params and params[name].default is inspect.Parameter.empty:
            return (
                f"'{name}' has rows that are all NaN (not observed), but the signature has no "
                f"default for '{name}' to take None: write `{name}=None`"
            )
    return ""
