"""Generative models p(z) p_theta(x | z), and :data:`MODELS`, the registry the CLI reads.

Each registry entry builds a model from an :class:`~ppvae.config.ArchConfig` and a
:class:`~ppvae.config.DataShape`. Pick the likelihood by key (or by decoder class in Python).
"""

from collections.abc import Callable

import torch
from torch import nn

from ppvae.config import ArchConfig, ConfigError, DataShape
from ppvae.models.cvae import CVAE, BaselineNet
from ppvae.models.decoders import BernoulliDecoder, ContinuousBernoulliDecoder, GaussianDecoder
from ppvae.models.m2 import M2
from ppvae.models.mixture import MixturePriorVAE
from ppvae.models.ppca import PPCA
from ppvae.models.sites import CLUSTER, DATA, LATENT, OBS, data_plate
from ppvae.models.vae import VAE
from ppvae.nets import MLP, ConvDecoderNet


def decoder_net(arch: ArchConfig, shape: DataShape) -> nn.Module:
    """z (..., q) -> (..., D): an MLP mirroring the encoder's hidden sizes, or the conv net."""
    if arch.conv:
        return ConvDecoderNet(arch.z_dim, shape.image_shape)
    return MLP(arch.z_dim, shape.x_dim, hidden=tuple(reversed(arch.hidden)))


def bernoulli(arch: ArchConfig, shape: DataShape) -> VAE:
    """Bernoulli likelihood (cross-entropy): binary or grey-level pixels in [0, 1]."""
    return VAE(BernoulliDecoder(decoder_net(arch, shape)), arch.z_dim, missing=shape.missing)


def gaussian(arch: ArchConfig, shape: DataShape) -> VAE:
    """Gaussian likelihood N(x_hat, I): squared error."""
    decoder = GaussianDecoder(decoder_net(arch, shape), sigma=1.0)
    return VAE(decoder, arch.z_dim, missing=shape.missing)


def gaussian_learned(arch: ArchConfig, shape: DataShape) -> VAE:
    """Gaussian likelihood with a learned per-pixel sigma."""
    sigma = torch.ones(shape.x_dim)
    decoder = GaussianDecoder(decoder_net(arch, shape), sigma=sigma, learn_sigma=True)
    return VAE(decoder, arch.z_dim, missing=shape.missing)


def continuous_bernoulli(arch: ArchConfig, shape: DataShape) -> VAE:
    """Continuous Bernoulli likelihood: a proper density for grey levels in [0, 1]."""
    decoder = ContinuousBernoulliDecoder(decoder_net(arch, shape))
    return VAE(decoder, arch.z_dim, missing=shape.missing)


def mixture_prior(arch: ArchConfig, shape: DataShape) -> MixturePriorVAE:
    """Bernoulli likelihood, Gaussian-mixture prior, its component enumerated (objective enum)."""
    decoder = BernoulliDecoder(decoder_net(arch, shape))
    return MixturePriorVAE(decoder, arch.z_dim, arch.components, missing=shape.missing)


def ppca(arch: ArchConfig, shape: DataShape) -> PPCA:
    """Linear decoder, Gaussian noise with one learned sigma: PPCA, the linear VAE's model."""
    return PPCA(shape.x_dim, arch.z_dim, missing=shape.missing)


def m2(arch: ArchConfig, shape: DataShape) -> M2:
    """Semi-supervised VAE M2 (Kingma 2014), y enumerated where unlabelled (--labels N)."""
    if shape.classes is None:
        raise ConfigError("the m2 model needs labelled data (--labels N)")
    return M2(shape.x_dim, shape.classes, arch.z_dim, arch.hidden)


def cvae(arch: ArchConfig, shape: DataShape) -> CVAE:
    """Conditional VAE for quadrant completion (Pyro's cvae), on a plain network (--quadrants)."""
    return CVAE(shape.x_dim, arch.z_dim, BaselineNet(shape.x_dim, arch.hidden), arch.hidden)


#: The models by name (``--model``): each builds a model from an ArchConfig and a DataShape.
MODELS: dict[str, Callable[[ArchConfig, DataShape], nn.Module]] = {
    "bernoulli": bernoulli,
    "gaussian": gaussian,
    "gaussian-learned": gaussian_learned,
    "continuous-bernoulli": continuous_bernoulli,
    "mixture-prior": mixture_prior,
    "ppca": ppca,
    "m2": m2,
    "cvae": cvae,
}

__all__ = [
    "CLUSTER",
    "DATA",
    "LATENT",
    "MODELS",
    "OBS",
    "BaselineNet",
    "CVAE",
    "M2",
    "MixturePriorVAE",
    "PPCA",
    "VAE",
    "BernoulliDecoder",
    "ContinuousBernoulliDecoder",
    "GaussianDecoder",
    "data_plate",
    "decoder_net",
]
