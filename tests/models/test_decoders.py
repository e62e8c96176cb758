"""Each decoder's log-likelihood against its textbook formula."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ppvae.models.decoders import BernoulliDecoder, ContinuousBernoulliDecoder, GaussianDecoder


class Fixed(nn.Module):
    """A 'network' that returns given outputs, so the likelihood is all that is tested."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, z):
        return self.out.expand(*z.shape[:-1], -1)


@pytest.fixture
def logits():
    return torch.randn(5, 7, dtype=torch.float64)


def test_bernoulli_is_minus_the_binary_cross_entropy(logits):
    x = torch.rand(5, 7, dtype=torch.float64)  # grey levels are scored too
    log_p = BernoulliDecoder(Fixed(logits))(torch.zeros(5, 2)).log_prob(x)
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    assert torch.allclose(log_p, -bce, atol=1e-12)
    by_hand = (x * torch.sigmoid(logits).log() + (1 - x) * torch.sigmoid(-logits).log()).sum(-1)
    assert torch.allclose(log_p, by_hand, atol=1e-12)


def test_gaussian_with_unit_sigma_is_half_the_squared_error(logits):
    x = torch.randn(5, 7, dtype=torch.float64)
    log_p = GaussianDecoder(Fixed(logits))(torch.zeros(5, 2)).log_prob(x)
    expected = -0.5 * (x - logits).pow(2).sum(-1) - 7 / 2 * math.log(2 * math.pi)
    assert torch.allclose(log_p, expected, atol=1e-12)


def test_gaussian_with_learned_sigma_per_pixel(logits):
    sigma = torch.linspace(0.5, 2.0, 7, dtype=torch.float64)
    decoder = GaussianDecoder(Fixed(logits), sigma=sigma, learn_sigma=True)
    x = torch.randn(5, 7, dtype=torch.float64)
    log_p = decoder(torch.zeros(5, 2)).log_prob(x)
    expected = -0.5 * ((x - logits) / sigma) ** 2 - sigma.log() - 0.5 * math.log(2 * math.pi)
    assert torch.allclose(log_p, expected.sum(-1), atol=1e-12)
    log_p.sum().backward()
    assert decoder.sigma_unconstrained.grad is not None  # sigma is learned
    assert "sigma" not in dict(GaussianDecoder(Fixed(logits)).named_parameters())


def test_gaussian_sigma_must_be_positive(logits):
    with pytest.raises(ValueError, match="positive"):
        GaussianDecoder(Fixed(logits), sigma=0.0)


def test_continuous_bernoulli_is_a_normalised_density():
    lam = torch.tensor([[0.1, 0.5, 0.93]], dtype=torch.float64)
    decoder = ContinuousBernoulliDecoder(Fixed(torch.logit(lam)))
    # integrate each pixel's density over [0, 1] with the trapezoid rule
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    q = decoder(torch.zeros(1, 2)).base_dist
    dens = q.log_prob(grid[:, None].expand(-1, 3)).exp()
    assert torch.allclose(torch.trapezoid(dens, grid, dim=0), torch.ones(3).double(), atol=1e-8)
    # and its log-density is the Bernoulli's plus log C(lambda) (Loaiza-Ganem & Cunningham)
    lam = torch.tensor([[0.1, 0.3, 0.93]], dtype=torch.float64)
    q = ContinuousBernoulliDecoder(Fixed(torch.logit(lam)))(torch.zeros(1, 2)).base_dist
    x = torch.tensor([[0.2, 0.7, 0.4]], dtype=torch.float64)
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    bernoulli = x * lam.log() + (1 - x) * (1 - lam).log()
    assert torch.allclose(q.log_prob(x), bernoulli + log_c, atol=1e-10)


def test_decoders_declare_the_support_they_need():
    net = Fixed(torch.zeros(1, 3))
    assert BernoulliDecoder(net).requires_unit_interval
    assert ContinuousBernoulliDecoder(net).requires_unit_interval
    assert not GaussianDecoder(net).requires_unit_interval
