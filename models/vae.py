"""The VAE model: a standard normal prior and a decoder likelihood."""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ppvae.data.missing import observed
from ppvae.models.sites import LATENT, OBS, batch_rows, data_plate


def entrywise(likelihood: dist.Distribution) -> bool:
    """Whether ``likelihood`` (event shape (D,)) is a product over entries whose factors can be
    masked one by one: an ``Independent`` over one dimension, as every catalogue decoder's."""
    return isinstance(likelihood, dist.Independent) and likelihood.reinterpreted_batch_ndims == 1


def observed_entries(likelihood: dist.Distribution, mask: torch.Tensor) -> dist.Distribution:
    """p(x_obs | z): the entries where ``mask`` (..., D) is False drop out of the product.

    The per-entry distribution is masked (Pyro's ``Distribution.mask``) before the entries are
    summed into one event, so a masked entry contributes exactly 0 to the log-density.

    Examples
    --------
    >>> p = dist.Normal(torch.zeros(1, 3), 1.0).to_event(1)
    >>> mask = torch.tensor([[True, False, True]])
    >>> float(observed_entries(p, mask).log_prob(torch.zeros(1, 3))) == 2 * float(
    ...     dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.0)))
    True
    """
    return dist.Independent(likelihood.base_dist.mask(mask), 1)


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

    Built with ``missing=True``, missing entries (NaN in ``x``) drop out of the likelihood,
    which becomes p(x_obs | z) = prod_{d observed} p(x_d | z) (see :meth:`observe`), so ``fit``
    trains on incomplete data (``accepts_missing``) and the importance-weighted bound
    (objective ``iwae``) is MIWAE's (Mattei & Frellsen 2019). Pair it with a guide that reads
    the mask (``GUIDES["masked-diag"]``). With nothing missing the sites and numbers are those
    of the plain likelihood; the mask costs a little at every step, so it is a choice.

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

    static_structure = True
    """The same sites and operations for every batch (missing entries are a mask, not a
    branch), so ``fit``'s auto mode may compile its loss (``FitConfig.jit``)."""

    def __init__(
        self, decoder: PyroModule, z_dim: int, *, missing: bool = False, name: str = "model"
    ):
        super().__init__(name)
        self.decoder = decoder
        self.z_dim = z_dim
        # p(z)'s mean, a buffer so it follows the model's device and dtype at no cost per step
        self.register_buffer("z_loc", torch.zeros(z_dim), persistent=False)
        self.accepts_missing = missing
        """NaN in ``x`` marks a missing entry, which the likelihood leaves out."""

    @property
    def requires_unit_interval(self) -> bool:
        """Whether the likelihood needs data in [0, 1] (Bernoulli-type decoders)."""
        return getattr(self.decoder, "requires_unit_interval", False)

    def prior(self) -> dist.Distribution:
        """p(z) = N(0, I_q), on the model's device and dtype; batch shape comes from the plate."""
        return dist.Normal(self.z_loc, torch.ones_like(self.z_loc)).to_event(1)

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
            return self.observe(z, x)

    def observe(self, z: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """The observed site x ~ p(x | z), inside the data plate: only the entries of ``x``
        that are not NaN are scored (the others are zero-filled and masked out), or, with
        ``x=None``, a draw. A decoder whose distribution is not a product over entries
        (:func:`entrywise`) observes ``x`` as it is."""
        likelihood = self.decoder(z)
        if x is None or not self.accepts_missing or not entrywise(likelihood):
            return pyro.sample(OBS, likelihood, obs=x)
        filled, mask = observed(x)
        return pyro.sample(OBS, observed_entries(likelihood, mask), obs=filled)
