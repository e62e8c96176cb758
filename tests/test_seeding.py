"""ppvae.seed: one call before building makes a whole run bit-identical, first weights on."""

import pyro
import torch

import ppvae
from ppvae import ArchConfig, DataShape, FitConfig, fit, load_dataset
from ppvae.guides import GUIDES
from ppvae.models import MODELS


def _store_after_fit(seed: int | None) -> dict[str, torch.Tensor]:
    """A fresh tiny VAE built (after ``ppvae.seed(seed)`` unless None) and fitted 2 epochs on
    300 digits; every tensor of the param store afterwards."""
    pyro.clear_param_store()
    if seed is not None:
        ppvae.seed(seed)
    x = load_dataset("digits", binarize="static").train[:300]
    arch, shape = ArchConfig(z_dim=2, hidden=(16,)), DataShape(64, (1, 8, 8), 300)
    model = MODELS["bernoulli"](arch, shape)
    guide = GUIDES["diag"](arch, shape, model)
    fit(model, guide, x, FitConfig(epochs=2, batch_size=100, device="cpu"), progress=False)
    store = pyro.get_param_store()
    return {name: store.get_param(name).detach().clone() for name in store.keys()}


def test_seeding_before_building_makes_two_fits_bit_identical():
    first, second = _store_after_fit(0), _store_after_fit(0)
    assert sorted(first) == sorted(second) and len(first) >= 4
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_without_it_the_first_weights_and_so_the_fits_differ():
    """FitConfig.seed is the same in both fits, but the networks were built unseeded."""
    first, second = _store_after_fit(None), _store_after_fit(None)
    assert sorted(first) == sorted(second)
    assert not any(torch.equal(first[name], second[name]) for name in first)


def test_seed_reaches_python_numpy_and_torch():
    import random

    import numpy as np

    draws = []
    for _ in range(2):
        ppvae.seed(7)
        draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]
