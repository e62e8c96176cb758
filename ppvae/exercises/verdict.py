"""A checker's verdict, and the comparisons that word it.

An exact answer is compared with a relative tolerance; a Monte Carlo answer with one derived
from its own standard error, so a correct estimator passes under any seed. A wrong answer is
matched against the typical mistakes (a sign error, a factor of 2, ...) so that the verdict
says which one it looks like.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

N_SE = 5.0
"""A Monte Carlo answer may miss the exact one by this many standard errors."""

Mistakes = Iterable[tuple[str, Tensor]]


@dataclass(frozen=True)
class Verdict:
    """What a checker found: ``ok`` and a sentence that says so, or says what is wrong.

    Truthy when ok; its repr is the sentence, so a grader that prints it shows the student
    the diagnosis.

    Examples
    --------
    >>> from ppvae.exercises import Verdict
    >>> Verdict(False, "your KL is twice the exact value (a missing 1/2?) at sigma = 0.5")
    your KL is twice the exact value (a missing 1/2?) at sigma = 0.5
    >>> bool(Verdict(True, "correct"))
    True
    """

    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return self.message

    __str__ = __repr__


class Wrong(Exception):
    """Raised inside a checker to stop at the first thing found wrong."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def judge(check: Callable[[], str]) -> Verdict:
    """Run ``check`` (which returns the success sentence or raises :class:`Wrong`)."""
    try:
        return Verdict(True, check())
    except Wrong as wrong:
        return Verdict(False, wrong.message)


def call(student: Callable, *args, name: str):
    """The student's function applied to ``args``; an exception becomes a verdict."""
    try:
        return student(*args)
    except Exception as error:  # any error in a student's code is a verdict, not a crash
        raise Wrong(f"your {name} raised {type(error).__name__}: {error}") from None


def unpack(value, names: tuple[str, ...], name: str) -> tuple:
    """``value`` as a tuple of ``len(names)`` parts, or :class:`Wrong` saying what came back."""
    if value is None or value is Ellipsis:
        raise Wrong(f"your {name} returned {value!r}: nothing was computed")
    if not isinstance(value, tuple | list) or len(value) != len(names):
        raise Wrong(f"your {name} should return a tuple ({', '.join(names)})")
    return tuple(value)


def as_tensor(value, like: Tensor, name: str) -> Tensor:
    """``value`` as a float64 tensor of ``like``'s shape, or :class:`Wrong` saying why not."""
    if value is None or value is Ellipsis:
        raise Wrong(f"your {name} returned {value!r}: nothing was computed")
    try:
        got = torch.as_tensor(value).detach().to(torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise Wrong(f"your {name} returned a {type(value).__name__}, not a tensor") from None
    if got.shape != like.shape:
        raise Wrong(f"your {name} has shape {tuple(got.shape)}; it should be {tuple(like.shape)}")
    if not torch.isfinite(got).all():
        raise Wrong(f"your {name} has NaN or infinite entries")
    return got


def generic(exact: Tensor) -> list[tuple[str, Tensor]]:
    """The mistakes every answer is matched against."""
    return [
        ("has the wrong sign", -exact),
        ("is twice the exact value (a missing 1/2?)", 2 * exact),
        ("is half the exact value (an extra 1/2?)", exact / 2),
    ]


def close(got: Tensor, exact: Tensor, rtol: float = 1e-5) -> bool:
    """Equal up to round-off, relative to the largest entry of ``exact``."""
    scale = exact.abs().max().item() if exact.numel() else 0.0
    return bool(((got - exact).abs() <= rtol * (1.0 + scale)).all())


def compare(value, exact: Tensor, name: str, where: str = "", mistakes: Mistakes = ()) -> None:
    """Raise :class:`Wrong` unless ``value`` equals ``exact``, naming the mistake it matches."""
    exact = exact.detach().to(torch.float64)
    got = as_tensor(value, exact, name)
    if close(got, exact):
        return
    for message, wrong in [*mistakes, *generic(exact)]:
        if close(got, wrong.detach().to(torch.float64), rtol=1e-4):
            raise Wrong(f"your {name} {message}{where}")
    error = (got - exact).abs()
    worst = int(error.argmax())
    raise Wrong(
        f"your {name} is wrong{where}: max abs error {error.max():.4g} "
        f"(you {got.flatten()[worst]:.6g}, exact {exact.flatten()[worst]:.6g})"
    )


def within_se(mean: Tensor, se: Tensor, target: Tensor, n_se: float = N_SE) -> bool:
    """Whether ``mean`` is within ``n_se`` standard errors of ``target`` in every entry."""
    floor = 1e-9 * (1.0 + target.abs())
    return bool(((mean - target).abs() <= n_se * se + floor).all())


def compare_estimates(
    estimates: Tensor, exact: Tensor, name: str, where: str = "", mistakes: Mistakes = ()
) -> None:
    """Raise :class:`Wrong` unless the mean of ``estimates`` (R, ...) is within ``N_SE``
    standard errors of ``exact``, naming the mistake whose value it matches instead."""
    exact = exact.detach().to(torch.float64)
    R = estimates.shape[0]
    mean = estimates.mean(0)
    se = estimates.std(0) / math.sqrt(R)
    if within_se(mean, se, exact):
        return
    for message, wrong in [*mistakes, *generic(exact)]:
        if within_se(mean, se, wrong.detach().to(torch.float64)):
            raise Wrong(f"your {name} {message}{where}")
    z = ((mean - exact).abs() / (se + 1e-12)).max()
    raise Wrong(
        f"your {name} is biased{where}: its mean over {R} runs, {_show(mean)}, is {z:.1f} "
        f"standard errors from the exact {_show(exact)}"
    )


def _show(t: Tensor) -> str:
    values = t.flatten().tolist()
    shown = ", ".join(f"{v:.4g}" for v in values[:4])
    return shown if len(values) == 1 else f"[{shown}{', ...' if len(values) > 4 else ''}]"


def seeded(seed: int | None) -> torch.Generator:
    """The generator of a checker's problem instance (seed 0 by default)."""
    return torch.Generator().manual_seed(0 if seed is None else seed)
