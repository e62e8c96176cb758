"""The conditional VAE for quadrant completion (Sohn et al. 2015), as Pyro's ``examples/cvae``.

``model(xs, ys=None)``: ``xs`` is an image whose hidden quadrants are -1, ``ys`` the image whose
given quadrants are -1 (:func:`ppvae.data.labels.quadrants`). A plain network
(:class:`BaselineNet`), trained first on its own, makes a first guess y_hat of the hidden
pixels; the prior network reads x and that guess, so the CVAE starts from the plain network's
answer and learns the spread around it.
"""

import copy

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from ppvae.models.sites import DATA, LABEL, LATENT
from ppvae.nets import MLP

MASKED = -1.0
"""The value of a pixel a tensor does not carry (as :data:`ppvae.data.labels.MASKED`)."""


class BaselineNet(nn.Module):
    """The plain network: the Bernoulli means (B, D) of every pixel given the input (B, D).

    Examples
    --------
    >>> BaselineNet(64, hidden=(32,))(torch.zeros(5, 64)).shape
    torch.Size([5, 64])
    """

    def __init__(self, x_dim: int, hidden=(500, 500)):
        super().__init__()
        self.net = MLP(x_dim, x_dim, hidden=tuple(hidden), activation=nn.ReLU)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(xs))


def masked_bernoulli_log_prob(probs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Per row (B,), sum over the pixels of ``ys`` that are not -1 of
    ``y log p + (1 - y) log(1 - p)``: the plain network's log-likelihood of the hidden pixels
    (minus Pyro's ``MaskedBCELoss``).

    Examples
    --------
    >>> ys = torch.tensor([[1.0, -1.0]])
    >>> float(masked_bernoulli_log_prob(torch.tensor([[0.5, 0.9]]), ys)) == float(
    ...     torch.tensor(0.5).log())
    True
    """
    hidden = ys != MASKED
    terms = -F.binary_cross_entropy(probs, ys.clamp(min=0), reduction="none")
    return (terms * hidden).sum(-1)


def frozen(module: nn.Module) -> nn.Module:
    """``module`` with every parameter turned into a buffer of the same name, in place: it still
    computes, is saved in ``state_dict`` and moves with ``.to``, but no optimizer (and no Pyro
    param store) ever sees it.

    Examples
    --------
    >>> net = frozen(nn.Linear(2, 1))
    >>> list(net.parameters()), sorted(net.state_dict())
    ([], ['bias', 'weight'])
    """
    for m in module.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            delattr(m, name)
            m.register_buffer(name, p.detach().clone())
    return module


class QuadrantEncoder(nn.Module):
    """(x, y) -> (loc, scale) of a Gaussian over z, reading the image x completed by y where x
    is -1 (Pyro's ``Encoder``): the recognition net q(z | x, y) and the prior net p(z | x, y_hat).

    Examples
    --------
    >>> encoder = QuadrantEncoder(4, z_dim=2, hidden=(8,))
    >>> loc, scale = encoder(-torch.ones(3, 4), torch.rand(3, 4))
    >>> loc.shape, bool((scale > 0).all())
    (torch.Size([3, 2]), True)
    """

    def __init__(self, x_dim: int, z_dim: int, hidden=(500, 500)):
        super().__init__()
        self.z_dim = z_dim
        self.net = MLP(x_dim, 2 * z_dim, hidden=tuple(hidden), activation=nn.ReLU)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = self.net(torch.where(xs == MASKED, ys, xs)).split(self.z_dim, -1)
        return loc, log_scale.exp()


class CVAE(PyroModule):
    """p_theta(z | x, y_hat(x)) p_theta(y | z): the conditional VAE of Pyro's example.

    Parameters
    ----------
    x_dim, z_dim : int
        D (pixels of the whole image) and the latent dimension q.
    baseline : BaselineNet
        The plain network, trained beforehand (or later, then handed over by
        :meth:`load_baseline`); the model keeps a frozen copy, whose weights no training of
        the CVAE changes.
    hidden : tuple of int
        Hidden sizes of the prior and generation networks.

    Notes
    -----
    .. math::

        z \\mid x \\sim \\mathcal{N}(\\mu_\\theta(x, \\hat y), \\sigma_\\theta(x, \\hat y)^2),
        \\qquad y_d \\mid z \\sim \\mathrm{Bernoulli}(g_\\theta(z)_d)
        \\text{ for the hidden pixels } d.

    Given ``ys`` it observes the hidden pixels (the -1 entries of ``ys`` drop out of the
    likelihood); without, it records the completion's means at a deterministic site ``y``, as
    Pyro's example does for ``Predictive``.

    Examples
    --------
    >>> cvae = CVAE(64, 2, BaselineNet(64, hidden=(16,)), hidden=(16,))
    >>> xs, ys = torch.rand(5, 64), torch.rand(5, 64).round()
    >>> pyro.poutine.trace(cvae).get_trace(xs, ys).nodes["y"]["is_observed"]
    True
    """

    def __init__(
        self, x_dim: int, z_dim: int, baseline: BaselineNet, hidden=(500, 500), *, name="model"
    ):
        super().__init__(name)
        self.baseline_net = frozen(copy.deepcopy(baseline))
        self.prior_net = QuadrantEncoder(x_dim, z_dim, hidden)
        self.generation_net = MLP(z_dim, x_dim, hidden=tuple(reversed(hidden)), activation=nn.ReLU)

    def load_baseline(self, trained: BaselineNet) -> None:
        """Take the weights of the plain network ``trained`` (of the same sizes)."""
        self.baseline_net.load_state_dict(trained.state_dict())

    def prior(self, xs: torch.Tensor) -> dist.Distribution:
        """p(z | x) = N(loc(x, y_hat), scale(x, y_hat)^2), y_hat the frozen plain network's."""
        with torch.no_grad():
            y_hat = self.baseline_net(xs)
        loc, scale = self.prior_net(xs, y_hat)
        return dist.Normal(loc, scale).to_event(1)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate(DATA, xs.shape[0]):
            z = pyro.sample(LATENT, self.prior(xs))
            probs = torch.sigmoid(self.generation_net(z))
            if ys is None:
                return pyro.deterministic(LABEL, probs.detach(), event_dim=1)
            hidden = ys != MASKED
            likelihood = dist.Bernoulli(probs, validate_args=False).mask(hidden).to_event(1)
            pyro.sample(LABEL, likelihood, obs=ys.clamp(min=0))
            return probs
