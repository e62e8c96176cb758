"""Data-parallel training on two CPU processes (gloo), against one process with the same
global batch and seed.

Exact equality of the random draws cannot hold: one process draws the noise of the whole
global batch from one stream, two ranks draw their halves from two. So equality is asserted
where the gradient does not depend on the draws (PPCA with its exact posterior as guide: the
ELBO is log p(x) for every z), and elsewhere the closest property: identical parameters on the
ranks, and the ELBO of one process within Monte Carlo noise.
"""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ppvae import checkpoint as ckpt

FAST = ["--hidden", "16", "--eval-samples", "20", "--batch-size", "128", "--device", "cpu"]
PPCA = ["--model", "ppca", "--guide", "ppca-exact", "--z-dim", "3", "--lr", "0.01"]


def torchrun(*args, ranks=2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*cmd, "-m", "ppvae", *map(str, args)], capture_output=True, text=True, env=env
    )


def single(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ppvae", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True)


def params(out: Path) -> dict[str, torch.Tensor]:
    return ckpt.load(out / "checkpoint.pt")["params"]["params"]


def test_two_ranks_take_the_steps_of_one_process_with_the_global_batch(tmp_path):
    """PPCA with the exact posterior guide: the gradient is that of log p(x), so two ranks
    averaging their halves' gradients step exactly as one process on the whole batch."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert single("train", "--out", one, "--epochs", 2, *PPCA, *FAST).returncode == 0
    proc = torchrun("train", "--out", two, "--epochs", 2, *PPCA, *FAST)
    assert proc.returncode == 0, proc.stderr
    expected, got = params(one), params(two)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    history = [pd.read_csv(o / "history.csv") for o in (one, two)]
    assert history[1].train_elbo.tolist() == pytest.approx(history[0].train_elbo, rel=1e-5)
    assert list(two.iterdir()) and not (two / "metrics.csv").read_text() == ""


def test_a_two_rank_run_resumes_to_the_uninterrupted_result(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert torchrun("train", "--out", straight, "--epochs", 3, *FAST).returncode == 0
    assert torchrun("train", "--out", resumed, "--epochs", 2, *FAST).returncode == 0
    proc = torchrun("train", "--out", resumed, "--resume", "--epochs", 3)
    assert proc.returncode == 0, proc.stderr
    expected, got = params(straight), params(resumed)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--batch-size", "127"], "the world size 2 does not divide the batch size 127"),
        (["--backend", "nccl"], "nccl"),
    ],
)
def test_a_wrong_launch_is_one_line(tmp_path, flags, message):
    proc = torchrun("train", "--out", tmp_path / "run", "--epochs", 1, *FAST, *flags)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("ppvae: error:")]
    assert len(ours) == 1 and message in ours[0], proc.stderr
    assert not (tmp_path / "run").exists()


def _worker(rank: int, world: int, folder: str, task: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world
    )
    try:
        torch.save(TASKS[task](), Path(folder) / f"{task}-{rank}.pt")
    finally:
        dist.destroy_process_group()


def _vae_fit():
    import pyro

    from ppvae import ArchConfig, DataShape, FitConfig, fit, load_dataset
    from ppvae.guides import GUIDES
    from ppvae.models import MODELS

    data = load_dataset("digits", binarize="static")
    arch, shape = ArchConfig(z_dim=2, hidden=(16,)), DataShape(64, (1, 8, 8), 1437)
    torch.manual_seed(0)
    model = MODELS["bernoulli"](arch, shape)
    guide = GUIDES["diag"](arch, shape, model)
    result = fit(model, guide, data, FitConfig(epochs=3, batch_size=128, device="cpu"))
    store = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return {"params": store, "history": result.history}


def _sharded_scores():
    from ppvae import elbo_terms, log_likelihood
    from ppvae.baselines import ppca_mle
    from ppvae.data import load_dataset
    from ppvae.distributed import scoring_together
    from ppvae.guides import ExactPPCAGuide
    from ppvae.models import PPCA

    x = load_dataset("digits").train.double()[:101]  # rows that two ranks cannot split evenly
    model = PPCA(64, 3).double().set_params(*ppca_mle(x, 3))
    guide = ExactPPCAGuide(model)
    with scoring_together():  # as fit and ppvae train score: each rank its share
        return {
            "log_px": log_likelihood(model, guide, x, num_samples=5).log_px,
            "elbo": elbo_terms(model, guide, x, num_samples=2, analytic=False).elbo,  # exact
            "one_row": log_likelihood(model, guide, x[:1], num_samples=5).log_px,  # a rank idle
        }


def _rank_zero_alone():
    """The usual DDP pattern, ``if rank == 0: evaluate(...)``: scoring outside fit is local."""
    if dist.get_rank() != 0:
        return None
    from ppvae import log_likelihood
    from ppvae.baselines import ppca_mle
    from ppvae.data import load_dataset
    from ppvae.guides import ExactPPCAGuide
    from ppvae.models import PPCA

    x = load_dataset("digits").train.double()[:50]
    model = PPCA(64, 3).double().set_params(*ppca_mle(x, 3))
    return log_likelihood(model, ExactPPCAGuide(model), x, num_samples=3).log_px


TASKS = {"vae": _vae_fit, "scores": _sharded_scores, "rank0": _rank_zero_alone}


def _spawn(task: str, folder: Path, world: int = 2) -> list:
    mp.spawn(_worker, args=(world, str(folder), task), nprocs=world, join=True)
    return [torch.load(folder / f"{task}-{r}.pt", weights_only=False) for r in range(world)]


def test_ranks_keep_identical_parameters_and_the_elbo_of_one_process(tmp_path):
    ranks = _spawn("vae", tmp_path)
    for name, value in ranks[0]["params"].items():
        assert torch.equal(ranks[1]["params"][name], value), name
    reference = _vae_fit()["history"].train_elbo.iloc[-1]
    two = ranks[0]["history"].train_elbo.iloc[-1]
    assert two == pytest.approx(reference, abs=1.0)  # a few nats of Monte Carlo and order


def test_evaluating_on_rank_zero_alone_does_not_wait_for_the_others(tmp_path):
    ranks = _spawn("rank0", tmp_path)
    assert ranks[0].shape == (50,) and ranks[1] is None


def test_sharded_evaluation_equals_one_process(tmp_path):
    ranks = _spawn("scores", tmp_path)
    alone = _sharded_scores()
    for rank in ranks:
        for key in ("log_px", "elbo", "one_row"):
            assert rank[key].shape == alone[key].shape
            torch.testing.assert_close(rank[key], alone[key], rtol=0, atol=1e-9)
