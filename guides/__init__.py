"""Guides q_phi(z | x), and :data:`GUIDES`, the registry the CLI reads.

Each registry entry builds a guide from an :class:`~ppvae.config.ArchConfig`, a
:class:`~ppvae.config.DataShape` and the model it will be paired with (only the exact PPCA
guide reads the model). Every guide samples the site :data:`~ppvae.models.sites.LATENT` inside
the data plate, so any guide pairs with any model.
"""

from collections.abc import Callable

from torch import nn

from ppvae.config import ArchConfig, ConfigError, DataShape
from ppvae.guides.amortized import (
    AmortizedGuide,
    DiagonalNormalHead,
    FullCovarianceHead,
    LowRankHead,
    MaskedInput,
)
from ppvae.guides.cvae import CVAEGuide
from ppvae.guides.flow import FlowHead
from ppvae.guides.local import LocalGuide
from ppvae.guides.m2 import M2Guide, classifier_pair
from ppvae.guides.ppca_exact import ExactObservedPPCAGuide, ExactPPCAGuide
from ppvae.nets import MLP, ConvEncoderNet


def encoder_net(arch: ArchConfig, shape: DataShape, out_dim: int) -> nn.Module:
    """x (..., D) -> (..., out_dim): the MLP or conv trunk shared by every amortized guide."""
    if arch.conv:
        return ConvEncoderNet(shape.image_shape, out_dim)
    return MLP(shape.x_dim, out_dim, hidden=arch.hidden)


def amortized(head: nn.Module, arch: ArchConfig, shape: DataShape) -> AmortizedGuide:
    """An encoder trunk sized for ``head``'s parameters, then the head."""
    return AmortizedGuide(encoder_net(arch, shape, head.param_dim), head)


def masked(head: nn.Module, arch: ArchConfig, shape: DataShape) -> AmortizedGuide:
    """An encoder of [zero-filled x, mask] (:class:`MaskedInput`), sized for ``head``."""
    image = shape.image_shape
    doubled = shape._replace(
        x_dim=2 * shape.x_dim, image_shape=None if image is None else (2 * image[0], *image[1:])
    )
    return AmortizedGuide(MaskedInput(encoder_net(arch, doubled, head.param_dim)), head)


def diagonal(arch: ArchConfig, shape: DataShape, model=None) -> AmortizedGuide:
    """N(mu(x), diag(sigma(x)^2)): the standard VAE encoder."""
    return amortized(DiagonalNormalHead(arch.z_dim), arch, shape)


def full_covariance(arch: ArchConfig, shape: DataShape, model=None) -> AmortizedGuide:
    """N(mu(x), L(x) L(x)^T) with a Cholesky factor."""
    return amortized(FullCovarianceHead(arch.z_dim), arch, shape)


def low_rank(arch: ArchConfig, shape: DataShape, model=None) -> AmortizedGuide:
    """N(mu(x), U(x) U(x)^T + diag(d(x))) with U of rank ``arch.rank``."""
    return amortized(LowRankHead(arch.z_dim, arch.rank), arch, shape)


def flow(arch: ArchConfig, shape: DataShape, model=None) -> AmortizedGuide:
    """An amortized Gaussian followed by ``arch.flows`` conditional IAF transforms."""
    return amortized(FlowHead(arch.z_dim, arch.flows, arch.context_dim), arch, shape)


def linear(arch: ArchConfig, shape: DataShape, model=None) -> AmortizedGuide:
    """A linear encoder N(V x + b, diag(softplus(U x + c))^2): the linear VAE's guide."""
    return AmortizedGuide(nn.Linear(shape.x_dim, 2 * arch.z_dim), DiagonalNormalHead(arch.z_dim))


def local(arch: ArchConfig, shape: DataShape, model=None) -> LocalGuide:
    """Per-datapoint N(mu_n, diag(sigma_n^2)): no amortization, no test-set encoding."""
    return LocalGuide(DiagonalNormalHead(arch.z_dim), shape.num_data)


def masked_diagonal(arch: ArchConfig, shape: DataShape, model=None) -> AmortizedGuide:
    """N(mu, diag(sigma^2)) of [zero-filled x, mask]: the encoder for missing entries (NaN)."""
    return masked(DiagonalNormalHead(arch.z_dim), arch, shape)


def ppca_exact(arch: ArchConfig, shape: DataShape, model=None) -> ExactPPCAGuide:
    """The exact PPCA posterior (needs the ``ppca`` model): ELBO = log p(x)."""
    if not hasattr(model, "W"):
        raise ConfigError("the ppca-exact guide needs the ppca model (--model ppca)")
    return ExactPPCAGuide(model)


def masked_ppca_exact(arch: ArchConfig, shape: DataShape, model=None) -> ExactObservedPPCAGuide:
    """The exact PPCA posterior given x_obs (needs the ``ppca`` model): ELBO = log p(x_obs)."""
    if not hasattr(model, "W"):
        raise ConfigError("the masked-ppca-exact guide needs the ppca model (--model ppca)")
    return ExactObservedPPCAGuide(model)


def m2(arch: ArchConfig, shape: DataShape, model=None) -> M2Guide:
    """q(y | x) q(z | x, y) of the m2 model, y enumerated (objective enum)."""
    if shape.classes is None or not hasattr(model, "classes"):
        raise ConfigError("the m2 guide needs the m2 model and labelled data (--labels N)")
    return M2Guide(shape.x_dim, shape.classes, arch.z_dim, arch.hidden)


def cvae(arch: ArchConfig, shape: DataShape, model=None) -> CVAEGuide:
    """q(z | x, y) of the cvae model (its prior network where y is not given)."""
    if not hasattr(model, "prior_net"):
        raise ConfigError("the cvae guide needs the cvae model (--model cvae)")
    return CVAEGuide(model, shape.x_dim, arch.z_dim, arch.hidden)


#: The guides by name (``--guide``): each builds a guide from an ArchConfig, a DataShape and
#: the model it pairs with.
GUIDES: dict[str, Callable[..., nn.Module]] = {
    "diag": diagonal,
    "full-cov": full_covariance,
    "low-rank": low_rank,
    "flow": flow,
    "linear": linear,
    "local": local,
    "ppca-exact": ppca_exact,
    "masked-diag": masked_diagonal,
    "masked-ppca-exact": masked_ppca_exact,
    "m2": m2,
    "cvae": cvae,
}

__all__ = [
    "GUIDES",
    "AmortizedGuide",
    "CVAEGuide",
    "M2Guide",
    "DiagonalNormalHead",
    "ExactObservedPPCAGuide",
    "ExactPPCAGuide",
    "FlowHead",
    "FullCovarianceHead",
    "LocalGuide",
    "LowRankHead",
    "MaskedInput",
    "classifier_pair",
    "encoder_net",
    "masked",
]
