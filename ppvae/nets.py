"""Neural networks shared by decoders and encoders: MLPs and small conv nets.

Every net maps a flat input of shape (..., D_in) to a flat output of shape (..., D_out), so
models and guides never reshape and any number of leading batch dimensions works.
"""

from collections.abc import Sequence

import torch
from torch import nn

from ppvae.config import ConfigError


class MLP(nn.Sequential):
    """A multilayer perceptron with softplus hidden layers and a linear output.

    Parameters
    ----------
    in_dim, out_dim : int
        Input and output sizes.
    hidden : sequence of int
        Hidden layer sizes; empty gives a single linear layer.
    activation : type of nn.Module
        Hidden nonlinearity (softplus, as in Pyro's VAE tutorial).

    Examples
    --------
    >>> MLP(64, 4, hidden=(32,))(torch.zeros(10, 64)).shape
    torch.Size([10, 4])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (400,),
        activation: type[nn.Module] = nn.Softplus,
    ):
        sizes = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), activation()]
        super().__init__(*layers, nn.Linear(sizes[-1], out_dim))


def _check_image_shape(image_shape: Sequence[int] | None) -> tuple[int, int, int]:
    if image_shape is None or len(image_shape) != 3:
        raise ConfigError(f"conv nets need an image shape (C, H, W), got {image_shape}")
    c, h, w = image_shape
    if h % 4 or w % 4:
        raise ConfigError(f"conv nets need H and W divisible by 4, got {h}x{w}")
    return c, h, w


class ConvEncoderNet(nn.Module):
    """Two stride-2 convolutions and a linear layer: (..., C*H*W) -> (..., out_dim).

    Examples
    --------
    >>> ConvEncoderNet((1, 8, 8), 4)(torch.zeros(5, 64)).shape
    torch.Size([5, 4])
    """

    def __init__(
        self, image_shape: Sequence[int], out_dim: int, channels: Sequence[int] = (32, 64)
    ):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        c, h, w = self.image_shape
        c1, c2 = channels
        self.conv = nn.Sequential(
            nn.Conv2d(c, c1, 4, stride=2, padding=1),
            nn.Softplus(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.Softplus(),
            nn.Flatten(),
        )
        self.out = nn.Linear(c2 * (h // 4) * (w // 4), out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-1]
        h = self.conv(x.reshape(-1, *self.image_shape))
        return self.out(h).reshape(*batch, -1)


class ConvDecoderNet(nn.Module):
    """A linear layer and two stride-2 transposed convolutions: (..., in_dim) -> (..., C*H*W).

    Examples
    --------
    >>> ConvDecoderNet(2, (1, 8, 8))(torch.zeros(3, 7, 2)).shape
    torch.Size([3, 7, 64])
    """

    def __init__(
        self, in_dim: int, image_shape: Sequence[int], channels: Sequence[int] = (64, 32)
    ):
        super().__init__()
        c, h, w = self.image_shape = _check_image_shape(image_shape)
        c1, c2 = channels
        self.grid = (c1, h // 4, w // 4)
        self.inp = nn.Sequential(nn.Linear(in_dim, c1 * (h // 4) * (w // 4)), nn.Softplus())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1),
            nn.Softplus(),
            nn.ConvTranspose2d(c2, c, 4, stride=2, padding=1),
            nn.Flatten(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = self.inp(z).reshape(-1, *self.grid)
        return self.deconv(h).reshape(*batch, -1)
