"""The guide of the semi-supervised VAE M2, q(y | x) q(z | x, y), and its auxiliary classifier.

As Pyro's ``examples/vae/ss_vae_M2.py``: a labelled row samples only z; an unlabelled row also
samples y from q(y | x), marked for parallel enumeration, so the objective ``enum``
(``TraceEnum_ELBO``) sums it out. The auxiliary pair :func:`classifier_pair` adds Kingma's
classification loss ``-weight * log q(y | x)`` on the labelled rows, the only place where
q(y | x) meets a label.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_

from ppvae.guides.amortized import positive
from ppvae.models.m2 import joined
from ppvae.models.sites import DATA, LABEL, LABEL_AUX, LATENT
from ppvae.nets import MLP


class M2Guide(PyroModule):
    """q_phi(y | x) q_phi(z | x, y): a classifier and an encoder that reads the class.

    Parameters
    ----------
    x_dim, classes, z_dim : int
    hidden : tuple of int
        Hidden sizes of both MLPs.

    Notes
    -----
    .. math::

        q(y \\mid x) = \\mathrm{OneHotCategorical}(\\mathrm{softmax}(g_\\phi(x))), \\qquad
        q(z \\mid x, y) = \\mathcal{N}(\\mu_\\phi(x, y), \\mathrm{diag}\\,\\sigma_\\phi(x, y)^2).

    With y enumerated, the unlabelled ELBO is
    ``sum_y q(y|x) [log p(x, y, z) - log q(z|x,y)] + H(q(y|x))``, with no sampling of y.

    Examples
    --------
    >>> guide = M2Guide(x_dim=64, classes=10, z_dim=2, hidden=(32,))
    >>> guide.classify(torch.rand(5, 64)).shape
    torch.Size([5])
    >>> trace = pyro.poutine.trace(guide).get_trace(torch.rand(5, 64))
    >>> trace.nodes["y"]["infer"]["enumerate"]
    'parallel'
    """

    def __init__(
        self, x_dim: int, classes: int, z_dim: int, hidden=(500,), *, name: str = "guide"
    ):
        super().__init__(name)
        self.z_dim = z_dim
        # a PyroModule of its own, so that the auxiliary classifier's model, which calls it
        # outside this guide, reads its weights from Pyro's param store too
        classifier = MLP(x_dim, classes, hidden=tuple(hidden))
        to_pyro_module_(classifier)
        self.encoder_y = classifier
        self.encoder_z = MLP(x_dim + classes, 2 * z_dim, hidden=tuple(hidden))

    def label_distribution(self, xs: torch.Tensor) -> dist.OneHotCategorical:
        """q(y | x) for images ``xs`` (B, D): batch shape (B,), event shape (C,)."""
        return dist.OneHotCategorical(logits=self.encoder_y(xs))

    def classify(self, xs: torch.Tensor) -> torch.Tensor:
        """The most probable class under q(y | x), (B,) int64."""
        return self.encoder_y(xs).argmax(-1)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        with pyro.plate(DATA, xs.shape[0]):
            if ys is None:
                ys = pyro.sample(
                    LABEL, self.label_distribution(xs), infer={"enumerate": "parallel"}
                )
            loc, rho = self.encoder_z(joined(xs, ys)).split(self.z_dim, -1)
            pyro.sample(LATENT, dist.Normal(loc, positive(rho)).to_event(1))


def classifier_pair(guide: M2Guide):
    """Pyro's ``model_classify`` and ``guide_classify`` for ``guide``'s q(y | x): the model
    observes the label at the site :data:`~ppvae.models.sites.LABEL_AUX` (so its loss is
    ``-log q(y | x)`` per labelled row) and the guide is empty. Pass them to ``fit`` as
    ``aux=[(model, guide, weight)]``; the weight is Pyro's ``aux_loss_multiplier`` (46).

    Examples
    --------
    >>> guide = M2Guide(x_dim=4, classes=3, z_dim=2, hidden=(8,))
    >>> model, empty = classifier_pair(guide)
    >>> trace = pyro.poutine.trace(model).get_trace(torch.rand(2, 4), torch.eye(3)[:2])
    >>> trace.nodes["y_aux"]["is_observed"]
    True
    """

    def model_classify(xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        with pyro.plate(DATA, xs.shape[0]):
            if ys is not None:
                pyro.sample(LABEL_AUX, guide.label_distribution(xs), obs=ys)

    def guide_classify(xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        pass

    return model_classify, guide_classify
