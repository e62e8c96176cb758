"""Seconds per SVI step, side by side in one run: how batches are fed, and JIT or not.

Variants (all train the same 784-400-50 Bernoulli VAE on Fashion-MNIST, batch 128):

- ``index``: ppvae's way: a shuffled index into a tensor already on the device;
- ``dataloader``: the Pyro tutorial's way: torchvision's dataset with ``ToTensor`` and a
  ``DataLoader`` (per-item transforms and per-batch collation);
- ``index+jit``: the index way with ``JitTrace_ELBO``.

Blocks of steps are interleaved round-robin and repeated, so load on this noisy machine hits
every variant alike; the table reports each variant's median time per step and its ratio to
``index``. Writes ``benchmarks/results/step_time.{csv,md}``.

    python benchmarks/step_time.py [--repeats 5] [--steps 50] [--device cpu]
"""

import argparse
import itertools
import time
import warnings
from pathlib import Path

import pandas as pd
import pyro
import torch
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO

from ppvae.config import ArchConfig, DataShape
from ppvae.data import load_dataset, resolve_root
from ppvae.guides import AmortizedGuide, DiagonalNormalHead, encoder_net
from ppvae.models import VAE, BernoulliDecoder, decoder_net
from ppvae.train import resolve_device

RESULTS = Path(__file__).parent / "results"
ARCH = ArchConfig(z_dim=50, hidden=(400,))


def make_svi(tag: str, num_data: int, jit: bool, device):
    """An SVI on a fresh VAE whose parameter names carry ``tag``: the variants share one
    param store, and the compiled objective must find its own parameters there by name."""
    shape = DataShape(784, (1, 28, 28), num_data)
    model = VAE(BernoulliDecoder(decoder_net(ARCH, shape)), ARCH.z_dim, name=f"model_{tag}")
    head = DiagonalNormalHead(ARCH.z_dim)
    guide = AmortizedGuide(encoder_net(ARCH, shape, head.param_dim), head, name=f"guide_{tag}")
    model, guide = model.to(device), guide.to(device)
    loss = JitTrace_ELBO() if jit else Trace_ELBO()
    return SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=loss)


def index_batches(train: torch.Tensor, batch: int):
    while True:
        perm = torch.randperm(len(train), device=train.device)
        for idx in perm[: len(perm) // batch * batch].view(-1, batch):
            yield train[idx], idx


def dataloader_batches(device, batch: int):
    from torchvision import datasets, transforms

    root = resolve_root("fashion-mnist")
    ds = datasets.FashionMNIST(root, train=True, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True)
    offset = torch.arange(batch, device=device)
    while True:
        for x, _ in loader:
            yield x.to(device).reshape(-1, 784), offset


def timed_block(svi, batches, steps: int, n: int, device) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        x, idx = next(batches)
        svi.step(x, idx, num_data=n)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = resolve_device(args.device)
    train = load_dataset("fashion-mnist").train.to(device)
    n = len(train)
    variants = {
        "index": (make_svi("a", n, False, device), index_batches(train, args.batch_size)),
        "dataloader": (
            make_svi("b", n, False, device),
            dataloader_batches(device, args.batch_size),
        ),
        "index+jit": (make_svi("c", n, True, device), index_batches(train, args.batch_size)),
    }
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer warnings
        for svi, batches in variants.values():  # warm-up (and JIT compilation)
            timed_block(svi, batches, 5, n, device)
        for rep, (name, (svi, batches)) in itertools.product(
            range(args.repeats), variants.items()
        ):
            rows.append(
                {
                    "repeat": rep,
                    "variant": name,
                    "seconds_per_step": timed_block(svi, batches, args.steps, n, device),
                }
            )
    write(pd.DataFrame(rows), args, device)


def write(raw: pd.DataFrame, args, device) -> None:
    table = (
        raw.groupby("variant", sort=False)["seconds_per_step"]
        .median()
        .to_frame("median_s_per_step")
    )
    table["ratio_to_index"] = table["median_s_per_step"] / table.loc["index", "median_s_per_step"]
    RESULTS.mkdir(exist_ok=True)
    raw.to_csv(RESULTS / "step_time.csv", index=False)
    note = (
        f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
        f"{args.repeats} interleaved repeats of {args.steps} steps; medians\n\n"
    )
    (RESULTS / "step_time.md").write_text(note + table.to_markdown(floatfmt=".4g") + "\n")
    print(note + table.to_markdown(floatfmt=".4g"))


if __name__ == "__main__":
    main()
