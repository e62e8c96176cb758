"""Objectives: which bound is maximised and how its gradient is estimated.

An :class:`Objective` builds a Pyro ELBO and, where the gradient estimator needs it, wraps the
guide (score-function objectives switch reparameterization off for the latent site). Pick one by
key from :data:`OBJECTIVES`; swapping is one word on the command line or one line in Python.
"""

from dataclasses import dataclass, field
from typing import Any

from pyro.infer import (
    ELBO,
    RenyiELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ppvae.pairs.losses import lean_loss


def _is_latent(msg: dict[str, Any]) -> bool:
    """A sample site that is neither observed nor a plate's subsample site."""
    return msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg)


class ScoreFunctionLatent(Messenger):
    """Mark every latent site as not reparameterizable, so Pyro uses the score-function
    (log-derivative, REINFORCE) estimator for it; optionally with a decaying-average baseline
    (used by ``TraceGraph_ELBO``). Sites are recognised by kind, not by name.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> def guide():
    ...     return pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    >>> site = pyro.poutine.trace(ScoreFunctionLatent()(guide)).get_trace().nodes["z"]
    >>> site["fn"].has_rsample
    False
    """

    def __init__(self, baseline: bool = False, baseline_beta: float = 0.9):
        super().__init__()
        self.baseline = baseline
        self.baseline_beta = baseline_beta

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if not _is_latent(msg) or not msg["fn"].has_rsample:
            return
        _detach_sampling(msg["fn"])
        if self.baseline:
            options = {"use_decaying_avg_baseline": True, "baseline_beta": self.baseline_beta}
            msg["infer"] = {**msg.get("infer", {}), "baseline": options}


def _detach_sampling(fn) -> None:
    """Switch reparameterized sampling off in place. Wrappers (Independent, expanded,
    transformed) read ``has_rsample`` from their base distribution, so it is set there.
    Outer plates (vectorized particles) expand the distribution after this messenger has run,
    and an expanded copy is a new instance, so the leaf's ``expand`` passes the switch on."""
    while isinstance(getattr(type(fn), "has_rsample", None), property):
        fn = fn.base_dist
    fn.has_rsample_(False)
    expand = fn.expand

    def detached_expand(*args, **kwargs):
        new = expand(*args, **kwargs)
        _detach_sampling(new)
        return new

    fn.expand = detached_expand


class LatentScale(Messenger):
    """Multiply the log-densities of every latent site by ``value`` (beta-VAE, KL annealing).

    Applied to both model and guide, it scales log p(z) - log q(z | x), i.e. the KL term; the
    observed sites (the reconstruction term) are untouched. ``value`` may be changed between
    steps.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> def model():
    ...     return pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    >>> pyro.poutine.trace(LatentScale(0.25)(model)).get_trace().nodes["z"]["scale"]
    0.25
    """

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.value = value

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if self.value != 1.0 and _is_latent(msg):
            msg["scale"] = msg["scale"] * self.value


@dataclass(frozen=True, kw_only=True)
class Objective:
    """A bound and a gradient estimator.

    Attributes
    ----------
    description : str
        One line for ``--help``.
    elbo : type of ELBO
        The Pyro estimator.
    reparameterized : bool
        False: score-function gradient for the latent site.
    baseline : bool
        With ``reparameterized=False``: subtract a decaying-average baseline.
    vectorize : bool
        Draw the particles in one vectorized pass.
    enumerates : bool
        Sums out the model's discrete latent sites that are marked for enumeration.
    lean : str or None
        The sync-free loss of :mod:`ppvae.pairs.losses` that training uses (``trace``,
        ``mean-field`` or ``iwae``); None trains with the Pyro estimator's own loss.
    options : dict
        Extra keyword arguments for the estimator (``alpha`` for Renyi).

    Examples
    --------
    >>> OBJECTIVES["iwae"].build(num_particles=5)  # doctest: +ELLIPSIS
    <pyro.infer.renyi_elbo.RenyiELBO object at ...>
    """

    description: str
    elbo: type[ELBO]
    reparameterized: bool = True
    baseline: bool = False
    vectorize: bool = False
    enumerates: bool = False
    lean: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, num_particles: int = 1, max_plate_nesting: int = 1) -> ELBO:
        """The Pyro ELBO object (for diagnostics and Pyro's own loop; ``fit`` trains with
        :meth:`loss_fn`).

        ``max_plate_nesting`` is the number of plate dimensions the model and guide use
        (:func:`ppvae.pairs.plate_nesting`); particles and enumeration go to their left.
        """
        cls = self.elbo
        return cls(
            num_particles=num_particles,
            vectorize_particles=self.vectorize or num_particles > 1,
            max_plate_nesting=max_plate_nesting,
            **self.options,
        )

    def loss_fn(self, model, guide, *, num_particles: int, max_plate_nesting: int, plate: str):
        """The training loss, ``loss(x, idx, num_data) -> Tensor``: value minus the bound,
        gradient minus the surrogate's; ``model`` and ``guide`` are called ``(x, idx,
        num_data)``. Sync-free where ``lean`` is set; else the Pyro estimator's own loss."""
        guide = self.wrap_guide(guide)
        if self.lean is not None:
            return lean_loss(
                self.lean,
                model,
                guide,
                num_particles=num_particles,
                nesting=max_plate_nesting,
                plate=plate,
            )
        elbo = self.build(num_particles, max_plate_nesting=max_plate_nesting)
        if isinstance(elbo, TraceGraph_ELBO):  # its public calls end in .item()

            def graph_loss(*args):
                value, surrogate = elbo._loss_and_surrogate_loss(model, guide, args, {})
                return surrogate + (-value - surrogate).detach()

            return graph_loss
        return lambda *args: elbo.differentiable_loss(model, guide, *args)

    def wrap_guide(self, guide):
        """The guide as this objective needs it (unchanged for reparameterized objectives)."""
        if self.reparameterized:
            return guide
        return ScoreFunctionLatent(baseline=self.baseline)(guide)


#: The objectives by name (``--objective``): each a loss and the ELBO class that scores it.
OBJECTIVES: dict[str, Objective] = {
    "trace": Objective(
        description="ELBO with a Monte Carlo KL term, reparameterized (Trace_ELBO)",
        elbo=Trace_ELBO,
        lean="trace",
    ),
    "mean-field": Objective(
        description="ELBO with the analytic KL where it exists (TraceMeanField_ELBO)",
        elbo=TraceMeanField_ELBO,
        lean="mean-field",
    ),
    "iwae": Objective(
        description="importance-weighted bound with K = num_particles, per example "
        "(RenyiELBO, alpha=0, with the minibatch scale applied after the log-mean-exp)",
        elbo=RenyiELBO,
        vectorize=True,
        lean="iwae",
        options={"alpha": 0.0},
    ),
    "score": Objective(
        description="ELBO with score-function (log-derivative) gradients for z, no baseline",
        elbo=Trace_ELBO,
        reparameterized=False,
        lean="trace",
    ),
    "enum": Objective(
        description="ELBO with discrete latents the guide leaves out summed out exactly "
        "(TraceEnum_ELBO; mark them infer={'enumerate': 'parallel'})",
        elbo=TraceEnum_ELBO,
        enumerates=True,
    ),
    "score-baseline": Objective(
        description="score-function gradients with a decaying-average baseline (TraceGraph_ELBO)",
        elbo=TraceGraph_ELBO,
        reparameterized=False,
        baseline=True,
    ),
}
