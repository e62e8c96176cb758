"""import ppvae sets OpenMP's passive wait before torch loads OpenMP, and keeps a user's own."""

import os
import runpy
import subprocess
import sys

import ppvae.threads

CODE = (
    "import os, sys, ppvae; order = list(sys.modules); "
    "print(os.environ['OMP_WAIT_POLICY'], order.index('ppvae.threads') < order.index('torch'))"
)


def test_import_ppvae_sets_the_passive_wait_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "PASSIVE True"


def test_a_wait_policy_in_the_environment_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert runpy.run_path(ppvae.threads.__file__)["WAIT_POLICY"] == "ACTIVE"
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
