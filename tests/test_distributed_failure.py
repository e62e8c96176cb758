"""An exception that one rank of a user-started process group meets alone inside ``fit``,
while its process lives on (the caller catches it), stops the other ranks within seconds:
without it they would wait in the next collective until gloo's timeout of 30 minutes.

Two gloo processes, started as tests/test_distributed.py starts them; each rank's stderr goes
to a file of its own, where the test reads its lines.
"""

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ppvae.distributed import GRACE, WATCH_EVERY

ROWS, BATCH = 64, 16  # 4 steps an epoch, each rank 8 rows of a step


def _worker(rank: int, world: int, folder: str, task: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    os.dup2(os.open(f"{folder}/stderr-{rank}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world
    )
    try:
        TASKS[task](rank, Path(folder))
    finally:
        dist.destroy_process_group()


def _pair_and_data():
    """A tiny Bernoulli VAE and the same 64 binary rows on every rank."""
    from ppvae import ArchConfig, DataShape
    from ppvae.guides import GUIDES
    from ppvae.models import MODELS

    x = torch.rand(ROWS, 4, generator=torch.Generator().manual_seed(0)).round()
    arch, shape = ArchConfig(z_dim=1, hidden=(4,)), DataShape(4, None, ROWS)
    model = MODELS["bernoulli"](arch, shape)
    return model, GUIDES["diag"](arch, shape, model), x


def _failing_at(model, step: int, armed: dict):
    """Make ``model`` raise on its ``step``-th call after ``armed["calls"]`` is set to 0
    (by ``on_epoch``: so the setup's checks, which call the model too, are not counted)."""
    forward = model.forward

    def failing(*args, **kwargs):
        if armed.get("calls") is not None:
            armed["calls"] += 1
            if armed["calls"] == step:
                raise RuntimeError("injected failure")
        return forward(*args, **kwargs)

    model.forward = failing


def _fit_failing(model, guide, x, fails: bool):
    """fit for 3 epochs; when ``fails``, the model raises at step 3 of epoch 2."""
    from ppvae import FitConfig, fit

    armed = {}
    if fails:
        _failing_at(model, 3, armed)
    config = FitConfig(epochs=3, batch_size=BATCH, device="cpu")
    return fit(model, guide, x, config, on_epoch=lambda history: armed.setdefault("calls", 0))


def _rank_one_fails_and_lives_on(rank: int, folder: Path) -> None:
    model, guide, x = _pair_and_data()
    try:
        _fit_failing(model, guide, x, fails=rank == 1)
    except Exception as err:
        (folder / f"failed-{rank}").write_text(f"{time.time()}\n{type(err).__name__}: {err}")
        time.sleep(60)  # other work: the process lives on (the test ends it sooner)


def _healthy(rank: int, folder: Path) -> None:
    """Every rank meets an error together (different resume flags: a ConfigError on each;
    then the same injected failure on each), catches it, and then trains to the end."""
    from ppvae import FitConfig, fit

    model, guide, x = _pair_and_data()
    caught = []
    try:
        fit(model, guide, x, FitConfig(epochs=1, batch_size=BATCH), resume=rank == 0)
    except ValueError as err:
        caught.append(type(err).__name__)
    try:
        _fit_failing(model, guide, x, fails=True)  # both ranks, at the same step
    except RuntimeError as err:
        caught.append(type(err).__name__)
    time.sleep(WATCH_EVERY + GRACE + 0.5)  # long enough for a leftover watchdog to misfire
    model, guide, x = _pair_and_data()
    epochs = len(_fit_failing(model, guide, x, fails=False).history)
    threads = [t.name for t in threading.enumerate()]
    (folder / f"healthy-{rank}").write_text(repr((caught, epochs, threads)))


TASKS = {"fails": _rank_one_fails_and_lives_on, "healthy": _healthy}


def _start(task: str, folder: Path):
    return mp.spawn(_worker, args=(2, str(folder), task), nprocs=2, join=False).processes


def _wait(processes, until, timeout: float) -> float:
    """Poll until ``until(processes)``; the time it held, or kill every rank and fail."""
    deadline = time.time() + timeout
    while not until(processes):
        if time.time() > deadline:
            for p in processes:
                p.kill()
            raise AssertionError(f"the ranks were still running after {timeout} s (a hang)")
        time.sleep(0.05)
    return time.time()


def _ours(folder: Path, rank: int) -> list[str]:
    lines = (folder / f"stderr-{rank}").read_text().splitlines()
    return [line for line in lines if line.startswith("ppvae: error:")]


def test_one_rank_failing_alone_ends_the_others_within_seconds(tmp_path):
    processes = _start("fails", tmp_path)
    try:
        ended = _wait(processes, lambda ps: ps[0].exitcode is not None, timeout=120)
        alive = processes[1].exitcode is None
    finally:
        for p in processes:
            p.kill()
            p.join()
    failed_at, error = (tmp_path / "failed-1").read_text().split("\n", 1)
    # rank 1's caller got the real error, and its process lived on
    assert error == "TrainingError: training failed at epoch 2, step 3: injected failure"
    assert alive
    # rank 0, blocked in step 3's gradient all-reduce, ended in seconds with one line
    assert processes[0].exitcode == 2
    assert ended - float(failed_at) < 15, ended - float(failed_at)
    assert _ours(tmp_path, 0) == [
        "ppvae: error: [rank 0] stopping: rank 1 failed: training failed at epoch 2, step 3: "
        "injected failure"
    ]
    assert not (tmp_path / "failed-0").exists()


def test_errors_every_rank_meets_end_no_process_and_a_healthy_run_exits_0(tmp_path):
    processes = _start("healthy", tmp_path)
    _wait(processes, lambda ps: all(p.exitcode is not None for p in ps), timeout=120)
    for rank, p in enumerate(processes):
        assert p.exitcode == 0, (tmp_path / f"stderr-{rank}").read_text()
        assert _ours(tmp_path, rank) == []
        caught, epochs, threads = eval((tmp_path / f"healthy-{rank}").read_text())
        assert caught == ["ConfigError", "TrainingError"]
        assert epochs == 3
        assert "ppvae-watchdog" not in threads  # each fit's watchdog ended with it


def test_under_torchrun_the_one_line_is_the_workers_error_file(tmp_path, monkeypatch, capsys):
    """torchrun's summary of the failed workers shows a worker's error file as its traceback
    (checked by hand: ``traceback : ppvae: error: --model: unknown choice 'bernouli'; ...``)."""
    from ppvae.cli import main

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    with pytest.raises(SystemExit) as done:  # a mistake argparse meets
        main(["train", "--model", "bernouli"])
    assert done.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("ppvae: error: --model: unknown choice 'bernouli'; did you mean")
    assert json.loads(error_file.read_text())["message"] == line
    error_file.unlink()
    out = tmp_path / "run"  # a mistake ppvae meets: the nccl backend on the CPU
    assert main(["train", "--out", str(out), "--backend", "nccl", "--device", "cpu"]) == 2
    line = capsys.readouterr().err.strip()
    assert "the nccl backend needs CUDA devices" in line
    assert json.loads(error_file.read_text())["message"] == line
