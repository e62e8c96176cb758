"""Shared fixtures: a clean, validated, seeded Pyro for every test (as in Pyro's own conftest)."""

import os
import signal

import pyro
import pytest
import torch

REQUIRE_DATA = os.environ.get("PPVAE_REQUIRE_DATA") == "1"


@pytest.fixture(autouse=True)
def clean_pyro():
    """Clear the param store, turn validation on and seed every generator."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def needs_data(available: bool, what: str):
    """Skip when a dataset is missing, but fail instead under ``PPVAE_REQUIRE_DATA=1``."""
    if available:
        return
    if REQUIRE_DATA:
        pytest.fail(f"{what} is required (PPVAE_REQUIRE_DATA=1) but missing")
    pytest.skip(f"{what} not available")


def cuda(test):
    """Mark a test as needing CUDA (select them with ``-m cuda``); skipped without a device."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return pytest.mark.cuda(skip(test))


def assert_steps_never_synchronize(step, x: torch.Tensor, batch: int) -> None:
    """Three CUDA steps on the first ``batch`` rows of ``x`` raise if any waits for the
    device (after one warm-up step, whose allocations may synchronize once)."""
    idx = torch.arange(batch, device=x.device)
    step(x[idx], idx, len(x))
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step(x[idx], idx, len(x))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def steps_then_sigint(monkeypatch, after: int):
    """Send SIGINT (Ctrl-C) to this process right after the training loop's ``after``-th step."""
    from ppvae.infer.loop import Step

    calls = {"n": 0}
    step = Step.__call__

    def wrapped(self, *args, **kwargs):
        loss = step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == after:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(Step, "__call__", wrapped)
