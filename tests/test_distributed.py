"""Data-parallel training on two CPU processes (gloo), against one process with the same
global batch and seed.

Exact equality of the random draws cannot hold: one process draws the noise of the whole
global batch from one stream, two ranks draw their halves from two. So equality is asserted
where the gradient does not depend on the draws (PPCA with its exact posterior as guide: the
ELBO is log p(x) for every z), and elsewhere the closest property: identical parameters on the
ranks, and the ELBO of one process within Monte Carlo noise.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ppvae.infer import checkpoint as ckpt

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
    assert sorted(f.name for f in two.iterdir()) == sorted(f.name for f in one.iterdir())


SMALL_BATCHES = [*FAST, "--batch-size", "16"]  # 89 steps an epoch: the ranks look at step 50


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = torchrun("train", "--out", out, "--epochs", 6, *SMALL_BATCHES)
    assert proc.returncode == 0, proc.stderr
    return out


def _same_run(got: Path, expected: Path) -> None:
    for name, value in params(expected).items():
        assert torch.equal(params(got)[name], value), name
    pd.testing.assert_frame_equal(
        pd.read_csv(got / "history.csv").drop(columns="seconds"),
        pd.read_csv(expected / "history.csv").drop(columns="seconds"),
    )


def test_a_two_rank_run_resumes_to_the_uninterrupted_result(straight, tmp_path):
    resumed = tmp_path / "resumed"
    assert torchrun("train", "--out", resumed, "--epochs", 3, *SMALL_BATCHES).returncode == 0
    proc = torchrun("train", "--out", resumed, "--resume", "--epochs", 6)
    assert proc.returncode == 0, proc.stderr
    _same_run(resumed, straight)


def test_ctrl_c_under_torchrun_saves_where_the_ranks_stopped_and_resumes_exactly(
    straight, tmp_path
):
    """A Ctrl-C in the terminal reaches torchrun and both ranks, and torchrun passes it on as
    SIGINT and SIGTERM at once: the ranks stop together at their next look (step 50 of an
    epoch, or its end) and save there."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    cmd += ["-m", "ppvae", "train", "--out", str(out), "--epochs", "6", *SMALL_BATCHES]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )  # fmt: skip
    deadline = time.time() + 120
    while not (out / "history.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, _ = proc.communicate(timeout=120)
    progress = ckpt.load(out / "checkpoint.pt")["progress"]
    if progress["epoch"] == 6:
        pytest.skip("the run finished before the signal arrived")
    assert (
        f"Continue with: torchrun --nproc-per-node 2 -m ppvae train --out {out} --resume" in stdout
    )
    assert progress["step"] in {0, 50}  # where the ranks look at their losses together
    assert torchrun("train", "--out", out, "--resume").returncode == 0
    _same_run(out, straight)


def test_a_wrong_launch_is_one_line(tmp_path):
    proc = torchrun("train", "--out", tmp_path / "run", "--epochs", 1, *FAST, "--batch-size", 127)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("ppvae: error:")]
    assert len(ours) == 1, proc.stderr
    assert "the world size 2 does not divide the batch size 127" in ours[0]
    assert not (tmp_path / "run").exists()


def test_a_loss_that_diverges_on_the_ranks_is_reported_once(tmp_path):
    proc = torchrun("train", "--out", tmp_path / "run", "--epochs", 2, *FAST, "--lr", "1e8")
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("ppvae: error:")]
    assert len(ours) == 1 and "the loss became" in ours[0] and "at epoch" in ours[0], ours


def test_a_backend_named_on_one_process_is_checked_too(tmp_path, capsys):
    from ppvae.cli import main

    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--backend", "nccl", "--device", "cpu"]) == 2
    assert "the nccl backend needs CUDA devices" in capsys.readouterr().err
    assert not out.exists()


def test_fit_warns_when_torchrun_started_processes_that_no_group_joins(monkeypatch):
    from ppvae import FitConfig, fit, load_dataset
    from ppvae.baselines import ppca_mle
    from ppvae.guides import ExactPPCAGuide
    from ppvae.models import PPCA

    monkeypatch.setenv("WORLD_SIZE", "2")
    x = load_dataset("digits").train[:64]
    model = PPCA(64, 2).set_params(*ppca_mle(x.double(), 2))
    with pytest.warns(UserWarning, match="torchrun started 2 processes .* each trains its own"):
        fit(model, ExactPPCAGuide(model), x, FitConfig(epochs=1, batch_size=32, device="cpu"))


@pytest.mark.parametrize(
    "device,backend,message",
    [
        ("cpu", "nccl", "nccl"),
        ("cpu", "mpi", "'mpi' is not available"),
    ],
)
def test_a_backend_that_cannot_run_is_one_line(device, backend, message):
    from ppvae.distributed import backend_for
    from ppvae.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        backend_for(torch.device(device), backend)


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


def _scored_on_rank_zero_each_epoch():
    """``if rank == 0: log_likelihood(...)`` inside ``on_epoch``, while the ranks train."""
    from ppvae import FitConfig, fit, load_dataset, log_likelihood
    from ppvae.baselines import ppca_mle
    from ppvae.guides import ExactPPCAGuide
    from ppvae.models import PPCA

    data = load_dataset("digits")
    model = PPCA(64, 3).set_params(*ppca_mle(data.train.double(), 3))
    guide, scores = ExactPPCAGuide(model), []

    def on_epoch(history):
        if dist.get_rank() == 0:
            scores.append(log_likelihood(model, guide, data.test[:20], num_samples=3).log_px)

    fit(model, guide, data, FitConfig(epochs=2, batch_size=128, lr=1e-3), on_epoch=on_epoch)
    return len(scores)


def _mismatched_calls():
    """What each rank is told when the ranks were given different data, or only one of them
    was told to resume."""
    from ppvae import ArchConfig, DataShape, FitConfig, fit, load_dataset
    from ppvae.guides import GUIDES
    from ppvae.models import MODELS

    rank, config = dist.get_rank(), FitConfig(epochs=1, batch_size=64, device="cpu")
    data = load_dataset("digits", binarize="static")
    arch, shape = ArchConfig(z_dim=2, hidden=(8,)), DataShape(64, None, 1437)
    pair = MODELS["bernoulli"](arch, shape), None
    pair = pair[0], GUIDES["diag"](arch, shape, pair[0])
    errors = []
    for data_, resume in [(data.train[: 1437 - 100 * rank], False), (data, rank == 0)]:
        try:
            fit(*pair, data_, config, checkpoint=None, resume=resume)
        except ValueError as err:
            errors.append(str(err))
    return errors


def _gradients_some_ranks_reach():
    """Parameter a is reached on every rank, b on rank 1 only, c on none."""
    from ppvae.distributed import average_gradients

    rank = dist.get_rank()
    a, b, c = (torch.zeros(2, requires_grad=True) for _ in range(3))
    loss = (a * (rank + 1)).sum() + (b * 4 * rank).sum()
    loss.backward()
    average_gradients([a, b, c], world=2)
    return a.grad, b.grad, c.grad


def _data_forms_fits():
    """Two-rank fits of data that is more than x: the same fit on a tuple (x, y) and on the
    packed [x | y], and a partly observed y with the linear-Gaussian model and exact posterior
    guide of test_partly_observed (no Monte Carlo noise in its gradient, so two ranks take the
    steps of one process exactly). One spawn for both, to keep the suite short."""
    import pyro

    from ppvae import FitConfig, fit
    from tests import test_partly_observed as partly
    from tests.test_data_forms import PAIRS, _split

    found = {}
    for form in ("tuple", "packed"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        fit(*PAIRS[form], _split(form), FitConfig(epochs=2, batch_size=10, lr=0.05))
        found[form] = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    pyro.clear_param_store()
    config = FitConfig(epochs=2, batch_size=8, lr=0.01)
    found["partly"] = fit(partly.model, partly.guide, partly._data(), config).history
    found["a"] = pyro.param("a").detach().clone()
    return found


TASKS = {
    "forms": _data_forms_fits,
    "vae": _vae_fit,
    "scores": _sharded_scores,
    "rank0": _rank_zero_alone,
    "on_epoch": _scored_on_rank_zero_each_epoch,
    "mismatch": _mismatched_calls,
    "grads": _gradients_some_ranks_reach,
}


def _spawn(task: str, folder: Path, world: int = 2, timeout: float = 240) -> list:
    """Run ``task`` on ``world`` gloo ranks; fail (not hang) if they wait on each other."""
    context = mp.spawn(_worker, args=(world, str(folder), task), nprocs=world, join=False)
    deadline = time.time() + timeout
    while not context.join(timeout=1):
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{task}: the ranks were still running after {timeout} s (a hang)")
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


def test_scoring_on_rank_zero_inside_on_epoch_does_not_wait_for_the_others(tmp_path):
    assert _spawn("on_epoch", tmp_path, timeout=120) == [2, 0]


def test_ranks_given_different_data_or_resume_flags_are_told_so(tmp_path):
    for errors in _spawn("mismatch", tmp_path):
        assert len(errors) == 2, errors
        assert "every rank must be given the same training data" in errors[0]
        assert "every rank must be given the same resume flag" in errors[1]


def test_a_gradient_some_ranks_reach_is_averaged_and_one_none_reach_stays_none(tmp_path):
    for a, b, c in _spawn("grads", tmp_path):
        assert torch.equal(a, torch.full((2,), 1.5))  # (1 + 2) / 2
        assert torch.equal(b, torch.full((2,), 2.0))  # (0 + 4) / 2: rank 0 counts zero
        assert c is None  # as on one process: Adam leaves it alone


def test_tuple_and_partly_observed_data_under_two_ranks_train_as_one_process(tmp_path):
    alone = _data_forms_fits()
    for rank in _spawn("forms", tmp_path):
        for name, value in rank["packed"].items():
            torch.testing.assert_close(rank["tuple"][name], value, rtol=0, atol=1e-6)
        torch.testing.assert_close(rank["a"], alone["a"], rtol=0, atol=1e-6)
        assert rank["partly"].batch_rows_no_arg1.tolist() == [6, 6]  # (x, y): positional
