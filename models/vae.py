"""The VAE model: a standard normal prior and a decoder likelihood."""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ppvae.models.sites import LATENT, OBS, batch_rows, data_plate


class VAE(PyroModule):
    """The generative model p(z) p_theta(x | z) of a variational autoencoder.

    Parameters
    ----------
    decoder : PyroModule
        Maps z (..., q) to the distribution p(x | z) with event shape (D,); its class picks the
        likelihood (:class:`~ppvae.models.decoders.BernoulliDecoder`, ...).
    z_dim : int
        The latent dimension q.
    name : str
        Prefix of the parameter names in Pyro's param store, so that the model's parameters
        never collide with a guide's.

    Notes
    -----
    .. math::

        z_n \\sim \\mathcal{N}(0, I_q), \\qquad x_n \\mid z_n \\sim p_\\theta(x_n \\mid z_n),
        \\qquad n = 1, \\dots, N.

    The data plate scales a minibatch of B rows by N / B (see
    :func:`~ppvae.models.sites.data_plate`), so the ELBO of a minibatch estimates the full-data
    ELBO.

    Called with ``x=None`` it draws ``batch_size`` examples from the model, so Pyro's
    ``Predictive`` samples its prior (and, with a guide and ``poutine.uncondition``, its
    posterior predictive).

    Examples
    --------
    >>> from torch import nn
    >>> from ppvae.models.decoders import BernoulliDecoder
    >>> vae = VAE(BernoulliDecoder(nn.Linear(2, 64)), z_dim=2)
    >>> trace = pyro.poutine.trace(vae).get_trace(torch.zeros(5, 64))
    >>> trace.nodes["z"]["value"].shape
    torch.Size([5, 2])
    >>> vae(None, batch_size=3).shape  # three draws from p(z) p(x | z)
    torch.Size([3, 64])
    """

    def __init__(self, decoder: PyroModule, z_dim: int, *, name: str = "model"):
        super().__init__(name)
        self.decoder = decoder
        self.z_dim = z_dim

    @property
    def requires_unit_interval(self) -> bool:
        """Whether the likelihood needs data in [0, 1] (Bernoulli-type decoders)."""
        return getattr(self.decoder, "requires_unit_interval", False)

    def reference(self) -> torch.Tensor:
        """A tensor on the model's device and dtype (one of its parameters)."""
        return next(self.parameters())

    def prior(self) -> dist.Distribution:
        """p(z) = N(0, I_q), on the model's device and dtype; batch shape comes from the plate."""
        loc = self.reference().new_zeros(self.z_dim)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

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
            z = pyro.sample(LATENT, self.prior())
            return pyro.sample(OBS, self.decoder(z), obs=x)
