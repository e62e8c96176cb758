"""Per-datapoint (non-amortized) guides: free variational parameters for every example."""

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from ppvae.guides.refine import FreeGuide, refine
from ppvae.models.sites import LATENT, data_plate
from ppvae.pairs import DEFAULT_PLATE

REFINE_STEPS = 100
"""Adam steps (each on all the new rows) that :meth:`LocalGuide.refined` takes by default."""

REFINE_EVAL_SAMPLES = 10
"""Samples of z per row in each of :func:`~ppvae.guides.refine.refine`'s checkpoint
evaluations inside :meth:`LocalGuide.refined` (cheap enough to run every epoch)."""

REFINE_LR = 0.05
"""Adam's learning rate in :meth:`LocalGuide.refined`: from the start (mean 0), a posterior
mean a few units away is reached in about a hundred steps."""


class LocalGuide(PyroModule):
    """q(z_n) = head(h_n) with free parameters h_n for every training example n.

    Parameters
    ----------
    head : nn.Module
        Raw parameters to a distribution over z (for example
        :class:`~ppvae.guides.amortized.DiagonalNormalHead`); it has a ``param_dim``.
    num_data : int
        N, the number of examples with their own parameters.
    init : Tensor, shape (N, head.param_dim), optional
        Starting parameters, for example an amortized encoder's output (see :func:`refine`).
        Defaults to zeros.
    refine_steps : int
        Adam steps :meth:`refined` takes to fit parameters for new examples (the test split
        that :func:`~ppvae.infer.fitting.fit` scores every epoch); default
        :data:`REFINE_STEPS`.

    Notes
    -----
    .. math::

        q(z_n; \\psi_n) = \\mathrm{head}(\\psi_n), \\qquad n = 1, \\dots, N,

    indexed by the data plate's subsample, so a minibatch updates only its own rows' gradient.
    Nothing is shared between examples: the best ELBO per example, with no amortization gap,
    at the price of N * P parameters and no way to encode a new x without optimizing
    (:mod:`ppvae.guides.refine` fits such parameters for held-out examples).

    Examples
    --------
    >>> from ppvae.guides.amortized import DiagonalNormalHead
    >>> guide = LocalGuide(DiagonalNormalHead(2), num_data=100)
    >>> guide(torch.zeros(8, 64), idx=torch.arange(8), num_data=100).shape
    torch.Size([8, 2])
    """

    amortized = False
    """No encoder: examples it was not fitted to are scored through :meth:`refined`."""

    site = LATENT
    """The sample site it draws (the one :meth:`refined` frees for new rows)."""

    def __init__(
        self,
        head: nn.Module,
        num_data: int,
        *,
        init: torch.Tensor | None = None,
        refine_steps: int = REFINE_STEPS,
        name: str = "guide",
    ):
        super().__init__(name)
        self.head = head
        self.refine_steps = refine_steps
        if init is None:
            init = torch.zeros(num_data, head.param_dim)
        if init.shape != (num_data, head.param_dim):
            raise ValueError(
                f"init must have shape {(num_data, head.param_dim)}, got {init.shape}"
            )
        self.local = nn.Parameter(init.detach().clone())

    def forward(
        self, x: torch.Tensor, idx: torch.Tensor | None = None, num_data: int | None = None
    ) -> torch.Tensor:
        if idx is None and x.shape[0] != self.local.shape[0]:
            raise ValueError(
                f"a per-datapoint guide with {self.local.shape[0]} rows got {x.shape[0]} "
                "examples and no idx: pass idx, the examples' row numbers"
            )
        with data_plate(x, idx, num_data) as ind:
            return pyro.sample(LATENT, self.head(self.local[ind]))

    def start(self, x: torch.Tensor) -> torch.Tensor:
        """Raw parameters for new examples ``x`` (N, D) before any refinement: zeros, shape
        (N, head.param_dim), the start every training row has by default (for
        :class:`~ppvae.guides.amortized.DiagonalNormalHead`, N(0, diag(0.69^2)))."""
        return x.new_zeros(x.shape[0], self.head.param_dim)

    def refined(
        self,
        model,
        x: torch.Tensor,
        *,
        steps: int | None = None,
        lr: float = REFINE_LR,
        seed: int = 0,
        plate: str = DEFAULT_PLATE,
    ) -> FreeGuide:
        """A guide for new examples ``x`` (N, D): psi_n fitted to each row by
        :func:`~ppvae.guides.refine.refine`, from :meth:`start`, with the model (and the head)
        fixed, ``steps`` (default ``refine_steps``) Adam steps of rate ``lr``, each row keeping
        its best checkpoint (:data:`REFINE_EVAL_SAMPLES` draws each). Call the result with
        ``idx``, row numbers of ``x``. :func:`~ppvae.infer.fitting.fit` scores the test split
        this way every epoch.

        ``seed`` fixes the checkpoint evaluations; the optimizer's draws come from torch's
        global stream (seed it for a reproducible result).
        """
        steps = self.refine_steps if steps is None else steps
        options = {"lr": lr, "eval_samples": REFINE_EVAL_SAMPLES, "seed": seed, "plate": plate}
        return refine(model, self, x, steps=steps, **options).guide
