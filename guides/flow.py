"""Normalizing-flow guide: an amortized Gaussian pushed through conditional IAF transforms."""

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from ppvae.config import ConfigError
from ppvae.guides.amortized import positive


class FlowHead(nn.Module):
    """h = (mu, rho, c) -> law of z_K = f_K(... f_1(z_0; c) ...; c), z_0 ~ N(mu, diag(sigma^2)).

    Each f_k is Pyro's conditional inverse-autoregressive transform
    (:class:`~pyro.distributions.transforms.ConditionalAffineAutoregressive`, gated "stable"
    form of Kingma et al. 2016), conditioned on the per-datapoint context c; the dimensions
    are reversed between steps. Sampling costs one pass per step and, because the transforms
    cache their last input, so does scoring the sample just drawn.

    Parameters
    ----------
    z_dim : int
        Latent dimension q (at least 2: an autoregressive transform needs two coordinates).
    flows : int
        Number of transforms K.
    context_dim : int
        Size of the context c that the encoder emits besides (mu, rho).
    hidden : int
        Hidden width of each transform's autoregressive network.

    Notes
    -----
    .. math::

        \\log q(z_K \\mid x) = \\log \\mathcal{N}(z_0; \\mu(x), \\sigma(x)^2)
        - \\sum_{k=1}^{K} \\log \\left| \\det \\frac{\\partial f_k}{\\partial z_{k-1}} \\right|.

    The KL term has no closed form, so it is estimated by Monte Carlo.

    Examples
    --------
    >>> head = FlowHead(2, flows=2, context_dim=3)
    >>> q = head(torch.zeros(5, head.param_dim))
    >>> q.rsample().shape, q.log_prob(q.rsample()).shape
    (torch.Size([5, 2]), torch.Size([5]))
    """

    def __init__(self, z_dim: int, flows: int = 2, context_dim: int = 16, hidden: int = 64):
        super().__init__()
        if z_dim < 2:
            raise ConfigError(f"the flow guide needs z_dim >= 2, got {z_dim}")
        self.z_dim, self.context_dim = z_dim, context_dim
        self.param_dim = 2 * z_dim + context_dim
        self.transforms = nn.ModuleList(
            T.conditional_affine_autoregressive(z_dim, context_dim, [hidden], stable=True)
            for _ in range(flows)
        )
        self.register_buffer("reverse", torch.arange(z_dim - 1, -1, -1), persistent=False)

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        loc, rho, context = h.split([self.z_dim, self.z_dim, self.context_dim], dim=-1)
        base = dist.Normal(loc, positive(rho)).to_event(1)
        steps: list[T.Transform] = []
        for k, transform in enumerate(self.transforms):
            if k:
                steps.append(T.Permute(self.reverse))
            steps.append(transform.condition(context))
        return dist.TransformedDistribution(base, steps)
