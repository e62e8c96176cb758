"""Decoders: a network from z to the parameters of p(x | z), returned as a distribution.

The likelihood is the decoder class you pick; there is no string switch:

- :class:`BernoulliDecoder`: cross-entropy, for binary (or grey-level) pixels in [0, 1];
- :class:`GaussianDecoder`: N(x_hat, sigma^2 I), squared error when sigma = 1, or a learned sigma;
- :class:`ContinuousBernoulliDecoder`: the normalised Bernoulli for grey levels in [0, 1].
"""

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions import constraints


class BernoulliDecoder(PyroModule):
    """p(x | z) = prod_d Bernoulli(x_d; sigmoid(f(z)_d)).

    Grey levels in [0, 1] are scored by the same cross-entropy (as in Pyro's VAE tutorial), so
    argument validation is off for the observation; the data checks reject values outside [0, 1].

    Examples
    --------
    >>> d = BernoulliDecoder(nn.Linear(2, 64))
    >>> d(torch.zeros(5, 2)).log_prob(torch.ones(5, 64)).shape
    torch.Size([5])
    """

    requires_unit_interval = True

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=self.net(z), validate_args=False).to_event(1)


class ContinuousBernoulliDecoder(PyroModule):
    """p(x | z) = prod_d CB(x_d; lambda_d(z)), the continuous Bernoulli (Loaiza-Ganem &
    Cunningham 2019): a proper density on [0, 1], unlike the Bernoulli on grey levels.

    Examples
    --------
    >>> d = ContinuousBernoulliDecoder(nn.Linear(2, 64))
    >>> d(torch.zeros(5, 2)).log_prob(torch.full((5, 64), 0.3)).shape
    torch.Size([5])
    """

    requires_unit_interval = True

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=self.net(z)).to_event(1)


class GaussianDecoder(PyroModule):
    """p(x | z) = N(x; f(z), diag(sigma^2)).

    Parameters
    ----------
    net : nn.Module
        Maps z (..., q) to the mean (..., D).
    sigma : float or Tensor
        The noise scale: a float is shared by all pixels, a (D,) tensor is per pixel. With
        ``sigma=1`` and ``learn_sigma=False`` this is the course notes' N(x_hat, I), whose
        log-likelihood is minus half the squared error plus a constant.
    learn_sigma : bool
        Learn sigma (kept positive) instead of fixing it.

    Examples
    --------
    >>> d = GaussianDecoder(nn.Linear(2, 3), sigma=torch.ones(3), learn_sigma=True)
    >>> d(torch.zeros(4, 2)).event_shape, d.sigma.shape
    (torch.Size([3]), torch.Size([3]))
    """

    requires_unit_interval = False

    def __init__(self, net: nn.Module, *, sigma=1.0, learn_sigma: bool = False):
        super().__init__()
        self.net = net
        sigma = torch.as_tensor(sigma, dtype=torch.get_default_dtype())
        if (sigma <= 0).any():
            raise ValueError(f"sigma must be positive, got {sigma}")
        if learn_sigma:
            self.sigma = PyroParam(sigma.clone(), constraint=constraints.positive)
        else:
            self.register_buffer("sigma", sigma.clone())

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        loc = self.net(z)
        return dist.Normal(loc, self.sigma.to(loc.dtype).expand(loc.shape)).to_event(1)
