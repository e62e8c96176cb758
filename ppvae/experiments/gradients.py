"""Gradient-estimator diagnostics: the log-derivative trick against reparameterization.

For a fixed model, guide and minibatch, :func:`gradient_estimates` draws many estimates of the
ELBO's gradient with respect to the guide's parameters, once per estimator (an objective of
:data:`~ppvae.pairs.objectives.OBJECTIVES`), and keeps their running mean and variance per
coordinate. :func:`gradient_table` summarises them per parameter group, :func:`gradient_plot`
draws them, and ``ppvae gradients`` does all three from the command line.
"""

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pyro
import torch
from matplotlib.figure import Figure

from ppvae.config import ConfigError, atomic_write_text
from ppvae.experiments.plots import InlineFigure, save
from ppvae.pairs import batched, param_tensors
from ppvae.pairs.objectives import OBJECTIVES

#: The columns of ``ppvae gradients``' table, in order.
TABLE_COLUMNS = [
    "estimator",
    "group",
    "num_params",
    "num_estimates",
    "mean_norm",
    "total_variance",
    "snr",
    "coordinate_snr",
]


class GradientMoments(NamedTuple):
    """Per-coordinate moments of one estimator's gradient estimates.

    Attributes
    ----------
    count : int
        M, the number of estimates.
    mean : dict of str to Tensor
        Sample mean of the ELBO gradient for each named guide parameter (its shape), float64.
    var : dict of str to Tensor
        Unbiased sample variance of each coordinate (the same shapes), float64.
    """

    count: int
    mean: dict[str, torch.Tensor]
    var: dict[str, torch.Tensor]


def _trace_params(fn, x, idx, num_data) -> dict[str, torch.Tensor]:
    """The parameters ``fn`` registers in Pyro's param store, by store name."""
    trace = pyro.poutine.trace(fn).get_trace(x, idx, num_data)
    return {n: p for n, p in param_tensors(trace).items() if p.requires_grad}


def _one_estimate(elbo, model, guide, params, args) -> dict[str, torch.Tensor]:
    """One gradient of the ELBO (minus the loss's) w.r.t. ``params``, as float64 tensors."""
    for p in params.values():
        p.grad = None
    elbo.loss_and_grads(model, guide, *args)
    return {
        n: torch.zeros_like(p, dtype=torch.float64) if p.grad is None else -p.grad.double()
        for n, p in params.items()
    }


def _moments(draw: Callable[[], dict[str, torch.Tensor]], count: int) -> GradientMoments:
    """Welford's running mean and variance of ``count`` draws."""
    mean: dict[str, torch.Tensor] = {}
    m2: dict[str, torch.Tensor] = {}
    for k in range(1, count + 1):
        for n, g in draw().items():
            if k == 1:
                mean[n], m2[n] = g.clone(), torch.zeros_like(g)
                continue
            delta = g - mean[n]
            mean[n] += delta / k
            m2[n] += delta * (g - mean[n])
    var = {n: v / max(count - 1, 1) for n, v in m2.items()}
    return GradientMoments(count, mean, var)


def _estimator_moments(key, model, guide, params, args, num_estimates, warmup, num_particles):
    objective = OBJECTIVES[key]
    elbo = objective.build(num_particles)
    wrapped = objective.wrap_guide(guide)
    store = pyro.get_param_store()
    before = set(store.keys())

    def draw():
        return _one_estimate(elbo, model, wrapped, params, args)

    try:
        for _ in range(warmup if objective.baseline else 0):
            draw()
        return _moments(draw, num_estimates)
    finally:  # a decaying-average baseline lives in the store: each estimator starts afresh
        for name in set(store.keys()) - before:
            del store[name]


def gradient_estimates(
    model,
    guide,
    x: torch.Tensor,
    *,
    idx: torch.Tensor | None = None,
    num_data: int | None = None,
    objectives: Sequence[str] = ("trace", "score", "score-baseline"),
    num_estimates: int = 100,
    warmup: int = 50,
    num_particles: int = 1,
    seed: int = 0,
) -> dict[str, GradientMoments]:
    """Many gradient estimates of the ELBO w.r.t. the guide's parameters, per estimator.

    Parameters
    ----------
    model, guide
        Any Pyro model and guide, ``f(x)`` or ``f(x, idx=None, num_data=None)``; the
        parameters are those the guide registers in Pyro's param store.
    x : Tensor, shape (B, D)
        The fixed minibatch.
    idx, num_data
        As in :func:`~ppvae.models.sites.data_plate`; by default the gradient is that of the
        ELBO summed over the B rows.
    objectives : sequence of str
        Keys of :data:`~ppvae.pairs.objectives.OBJECTIVES`, one estimator each.
    num_estimates : int
        M, estimates per estimator, each from ``num_particles`` samples of z per example.
    warmup : int
        Estimates drawn and discarded first by estimators with a decaying-average baseline,
        so that the baseline has settled at the running mean of this minibatch's cost
        (it starts at zero, i.e. no baseline) before anything is recorded.
    seed : int
        Seeds Pyro and torch before each estimator, so every estimator sees the same stream.

    Returns
    -------
    dict of str to GradientMoments
        Keyed by objective and then by param-store name. Model parameters do not move; their
        gradients are discarded.
    """
    check_estimates(objectives, num_estimates, warmup)
    args = (x, idx, num_data)
    model, guide = batched(model), batched(guide)
    params = _trace_params(guide, *args)
    result = {}
    for key in objectives:
        pyro.set_rng_seed(seed)
        result[key] = _estimator_moments(
            key, model, guide, params, args, num_estimates, warmup, num_particles
        )
    for p in pyro.get_param_store().get_state()["params"].values():
        p.grad = None
    return result


def check_estimates(objectives: Sequence[str], num_estimates: int, warmup: int) -> None:
    """Raise :class:`~ppvae.config.ConfigError` for an unknown objective or a count too small."""
    unknown = [k for k in objectives if k not in OBJECTIVES]
    if unknown:
        raise ConfigError(
            f"unknown objective(s) {', '.join(unknown)}; choose from: {', '.join(OBJECTIVES)}"
        )
    if num_estimates < 2:
        raise ConfigError(
            f"num_estimates must be >= 2 to estimate a variance, got {num_estimates}"
        )
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")


def top_level(name: str) -> str:
    """Group a parameter by its first name component: ``net.0.weight`` -> ``net``, and
    ``encoder$$$fc1.weight`` (``pyro.module``'s naming) -> ``encoder``."""
    return name.replace("$$$", ".").split(".")[0]


def _drop_common_prefix(moments: GradientMoments) -> GradientMoments:
    """``guide.net.0.weight`` -> ``net.0.weight`` when every name starts with ``guide.``
    (a PyroModule's name), so groups are the guide's parts."""
    heads = {n.split(".", 1)[0] for n in moments.mean}
    if len(heads) != 1 or any("." not in n for n in moments.mean):
        return moments
    strip = {n: n.split(".", 1)[1] for n in moments.mean}
    return GradientMoments(
        moments.count,
        {strip[n]: v for n, v in moments.mean.items()},
        {strip[n]: v for n, v in moments.var.items()},
    )


def _summary(estimator: str, group: str, count: int, mean, var) -> dict[str, object]:
    total_var = var.sum().item()
    sd = var.sqrt()
    nonzero = sd > 0
    coord = (mean.abs()[nonzero] / sd[nonzero]).mean().item() if nonzero.any() else math.nan
    mean_norm = mean.norm().item()
    return {
        "estimator": estimator,
        "group": group,
        "num_params": mean.numel(),
        "num_estimates": count,
        "mean_norm": mean_norm,
        "total_variance": total_var,
        "snr": mean_norm / math.sqrt(total_var) if total_var > 0 else math.nan,
        "coordinate_snr": coord,
    }


def gradient_table(
    moments: dict[str, GradientMoments], *, group: Callable[[str], str] = top_level
) -> pd.DataFrame:
    """Mean, variance and signal-to-noise ratio of each estimator, per group and in total.

    Parameters
    ----------
    moments : dict of str to GradientMoments
        From :func:`gradient_estimates`.
    group : callable
        Parameter name to group name (default: the first component, e.g. ``net``, ``head``).

    Returns
    -------
    DataFrame
        Columns :data:`TABLE_COLUMNS`, one row per estimator and group plus a ``total`` row:
        ``mean_norm`` = ||g_bar|| (the norm of the mean gradient), ``total_variance`` = the
        trace of the covariance of one estimate, ``snr`` = ||g_bar|| / sqrt(total_variance),
        and ``coordinate_snr`` = the mean over coordinates of ``|g_bar_i| / sd_i``.
    """
    rows = []
    for key, m in moments.items():
        m = _drop_common_prefix(m)
        groups: dict[str, list[str]] = {}
        for name in m.mean:
            groups.setdefault(group(name), []).append(name)
        for g, names in [*groups.items(), ("total", list(m.mean))]:
            mean = torch.cat([m.mean[n].flatten() for n in names])
            var = torch.cat([m.var[n].flatten() for n in names])
            rows.append(_summary(key, g, m.count, mean, var))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def gradient_plot(table: pd.DataFrame, path=None) -> Figure:
    """Bar charts of total variance and SNR per estimator (bars) and group (clusters)."""
    groups = list(dict.fromkeys(table["group"]))
    estimators = list(dict.fromkeys(table["estimator"]))
    fig = InlineFigure(figsize=(4 + 1.2 * len(groups), 3.5))
    axes = fig.subplots(1, 2)
    width = 0.8 / len(estimators)
    for i, est in enumerate(estimators):
        rows = table[table["estimator"] == est].set_index("group").reindex(groups)
        positions = [j + i * width for j in range(len(groups))]
        axes[0].bar(positions, rows["total_variance"], width, label=est)
        axes[1].bar(positions, rows["snr"], width, label=est)
    for ax, label in zip(axes, ("total variance", "SNR  ||mean|| / sqrt(total var)"), strict=True):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], groups)
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize="small")
    fig.suptitle("ELBO gradient w.r.t. the guide's parameters")
    return save(fig, path)


def to_markdown(table: pd.DataFrame) -> str:
    """The table as GitHub markdown, numbers to 4 significant digits."""
    return table.to_markdown(index=False, floatfmt=".4g") + "\n"


def write_outputs(table: pd.DataFrame, out: Path) -> list[Path]:
    """Write gradients.csv, gradients.md and gradients.png to ``out``, each atomically.

    Everything is rendered before the first file is written, so an error leaves ``out`` as
    it was.
    """
    csv, md, fig = table.to_csv(index=False), to_markdown(table), gradient_plot(table)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "gradients.csv", csv)
    atomic_write_text(out / "gradients.md", md)
    save(fig, out / "gradients.png")
    return [out / f"gradients.{ext}" for ext in ("csv", "md", "png")]
