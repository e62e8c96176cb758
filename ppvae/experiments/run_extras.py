"""What ``ppvae train`` adds for the catalogue's models that take more than x: M2's auxiliary
classifier pair, and the plain network a CVAE builds on, trained first."""

import torch

from ppvae.data import Dataset
from ppvae.experiments.run_config import RunConfig

AUX_WEIGHT = 46.0
"""Weight of M2's auxiliary classification loss (Pyro's ``aux_loss_multiplier``)."""


def auxiliary(guide) -> list:
    """The auxiliary pairs ``fit`` trains with ``guide``: M2's classifier loss on the labelled
    rows (:func:`ppvae.guides.classifier_pair`) for a guide that classifies; else none."""
    if not hasattr(guide, "classify"):
        return []
    from ppvae.guides import classifier_pair

    return [(*classifier_pair(guide), AUX_WEIGHT)]


def pretrained(run: RunConfig, data: Dataset, model):
    """``model``, with the plain network a CVAE builds on trained first (as Pyro's example
    does, with the run's epochs, batch size, learning rate and seed); other models as they are.
    """
    if not hasattr(model, "load_baseline"):
        return model
    from ppvae.experiments.conditions import train_baseline
    from ppvae.models.cvae import BaselineNet

    torch.manual_seed(run.fit.seed)
    inputs, outputs = data.train
    net = BaselineNet(inputs.shape[1], run.arch.hidden)
    f = run.fit
    net = train_baseline(
        net, inputs, outputs, epochs=f.epochs, batch_size=f.batch_size, lr=f.lr, seed=f.seed
    )
    model.load_baseline(net)
    return model
