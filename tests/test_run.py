"""A saved run comes back in one line: load_run rebuilds the pair with its trained parameters."""

import pyro
import pytest
import torch

from ppvae import ConfigError, elbo_terms, load_run
from ppvae.cli import main


def test_load_run_gives_back_the_trained_pair(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--epochs", "2", "--hidden", "16", "--eval-samples", "20", "--out", str(out)]
    assert main(args) == 0
    trained = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    pyro.clear_param_store()  # as in a new session
    run = load_run(out)
    assert run.config.fit.epochs == 2 and run.history.epoch.tolist() == [1, 2]
    store = pyro.get_param_store()
    assert sorted(store.keys()) == sorted(trained)
    for name, value in trained.items():
        assert torch.equal(store[name].detach(), value), name
    # the loaded pair scores the test set as the training run reported, with the same draws
    torch.manual_seed(0)
    test_elbo = elbo_terms(run.model, run.guide, run.data.test).elbo.mean().item()
    assert test_elbo == pytest.approx(run.history.test_elbo.iloc[-1], abs=0.5)


def test_load_run_of_an_empty_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no run in .*checkpoint.pt does not exist"):
        load_run(tmp_path)
