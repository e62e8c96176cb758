"""A VAE with a Gaussian-mixture prior, its discrete component summed out by enumeration."""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

from ppvae.models.sites import CLUSTER, LATENT, batch_rows, data_plate
from ppvae.models.vae import VAE


class MixturePriorVAE(VAE):
    """p(y) p(z | y) p_theta(x | z): a VAE whose prior is a mixture of K diagonal Gaussians.

    Parameters
    ----------
    decoder : PyroModule
        Maps z (..., q) to p(x | z), as in :class:`~ppvae.models.vae.VAE`.
    z_dim : int
        The latent dimension q.
    components : int
        K, the number of mixture components.
    name : str
        Prefix of the parameter names in Pyro's param store.

    Notes
    -----
    .. math::

        y_n \\sim \\mathrm{Categorical}(\\pi), \\qquad
        z_n \\mid y_n \\sim \\mathcal{N}(\\mu_{y_n}, \\mathrm{diag}(\\sigma_{y_n}^2)), \\qquad
        x_n \\mid z_n \\sim p_\\theta(x_n \\mid z_n).

    The component :data:`~ppvae.models.sites.CLUSTER` is marked for parallel enumeration, so a
    guide samples only z and ``TraceEnum_ELBO`` (objective ``enum``) sums y out exactly:

    .. math::

        \\mathrm{ELBO}(x) = \\mathbb{E}_{q(z \\mid x)}\\Big[\\log \\sum_{k=1}^K \\pi_k
        \\mathcal{N}(z; \\mu_k, \\sigma_k^2) + \\log p_\\theta(x \\mid z)
        - \\log q(z \\mid x)\\Big].

    pi, mu_k and sigma_k are learned with the decoder. Without an enumeration handler
    (sampling from the model, say) y is drawn like any other site.

    Examples
    --------
    >>> from torch import nn
    >>> from ppvae.models.decoders import BernoulliDecoder
    >>> vae = MixturePriorVAE(BernoulliDecoder(nn.Linear(2, 64)), z_dim=2, components=3)
    >>> trace = pyro.poutine.trace(vae).get_trace(torch.zeros(5, 64))
    >>> trace.nodes["y"]["value"].shape, trace.nodes["z"]["value"].shape
    (torch.Size([5]), torch.Size([5, 2]))
    """

    static_structure = False
    """Its enumerated cluster site is not tested under a compiled loss: auto stays eager."""

    def __init__(
        self,
        decoder: PyroModule,
        z_dim: int,
        components: int,
        *,
        missing: bool = False,
        name: str = "model",
    ):
        super().__init__(decoder, z_dim, missing=missing, name=name)
        self.components = components
        self.logits = PyroParam(torch.zeros(components))
        self.locs = PyroParam(torch.randn(components, z_dim))
        self.scales = PyroParam(torch.ones(components, z_dim), constraint=constraints.positive)

    def forward(
        self,
        x: torch.Tensor | None = None,
        idx: torch.Tensor | None = None,
        num_data: int | None = None,
        *,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Score a minibatch ``x`` of shape (B, D), or draw ``batch_size`` examples when ``x``
        is None; ``idx`` and ``num_data`` as in the plate."""
        with data_plate(batch_rows(x, idx, batch_size), idx, num_data):
            y = pyro.sample(
                CLUSTER, dist.Categorical(logits=self.logits), infer={"enumerate": "parallel"}
            )
            z = pyro.sample(LATENT, dist.Normal(self.locs[y], self.scales[y]).to_event(1))
            return self.observe(z, x)
