"""Seconds per training step, side by side in one run: ppvae's fit against PyTorch by hand.

Every variant trains the same 784-400-50 Bernoulli VAE (softplus MLPs, diagonal Gaussian
encoder) with Adam at lr 1e-3 on statically binarized Fashion-MNIST:

- ``hand``: eager PyTorch written by hand: encoder, decoder, the analytic KL,
  ``torch.optim.Adam`` with its defaults, and a loop over shuffled index batches of a tensor
  on the device;
- ``hand, fused Adam``: the same with ``torch.optim.Adam(fused=True)``, as ``fit`` steps;
- ``pyro tutorial``: Pyro's VAE tutorial loop: ``SVI`` with ``Trace_ELBO`` and
  ``pyro.optim.Adam``, batches from torchvision's dataset through a ``DataLoader``;
- ``fit``: the step ``ppvae.fit`` takes (``ppvae.infer.fitting.training_step``) with the default
  objective ``trace``: the ELBO from Pyro's traces (Monte Carlo KL), one fused Adam over the
  param store, no host synchronization;
- ``fit jit``: the same step with ``FitConfig(jit=True)``: the loss compiled once by
  ``torch.jit.trace`` and replayed.

Blocks of steps are interleaved round-robin and repeated, so load on a noisy machine hits every
variant alike; the table gives each variant's median seconds per step and its ratio to
``hand``. Writes ``benchmarks/results/step_time_<device>.{csv,md}``::

    python benchmarks/step_time.py [--device cpu|cuda] [--batch-size 128] [--repeats 7]
"""

import argparse
import itertools
import platform
import time
import warnings
from pathlib import Path

import pandas as pd
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from ppvae import ArchConfig, DataShape, FitConfig
from ppvae.data import load_dataset, resolve_root
from ppvae.guides import GUIDES, AmortizedGuide
from ppvae.infer.fitting import resolve_device, training_step
from ppvae.models import MODELS, VAE

RESULTS = Path(__file__).parent / "results"
D, H, Q, LR = 784, 400, 50, 1e-3


class HandVAE(nn.Module):
    """The same networks, the ELBO written out: what a user would write by hand."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(D, H), nn.Softplus(), nn.Linear(H, 2 * Q))
        self.decoder = nn.Sequential(nn.Linear(Q, H), nn.Softplus(), nn.Linear(H, D))

    def loss(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        loc, rho = self.encoder(x).chunk(2, -1)
        sigma = F.softplus(rho) + 1e-5
        z = loc + sigma * torch.randn_like(sigma)
        rec = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        kl = 0.5 * (loc.square() + sigma.square() - 1 - 2 * sigma.log()).sum()
        return scale * (kl - rec)


def hand(train: torch.Tensor, batch: int, **adam):
    vae = HandVAE().to(train.device)
    optim = torch.optim.Adam(vae.parameters(), lr=LR, **adam)
    scale = len(train) / batch

    def step(x, idx):
        loss = vae.loss(x, scale)
        optim.zero_grad()
        loss.backward()
        optim.step()

    return step, index_batches(train, batch)


class TutorialVAE(nn.Module):
    """Pyro's tutorial VAE (examples/vae/vae.py), model and guide as Pyro writes them."""

    def __init__(self, prefix: str = ""):
        super().__init__()
        self.prefix = prefix  # variants share the param store: their names must differ
        self.encoder = nn.Sequential(nn.Linear(D, H), nn.Softplus(), nn.Linear(H, 2 * Q))
        self.decoder = nn.Sequential(nn.Linear(Q, H), nn.Softplus(), nn.Linear(H, D))

    def model(self, x):
        pyro.module(self.prefix + "decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(x.shape[0], Q), 1.0).to_event(1))
            logits = self.decoder(z)
            pyro.sample(
                "obs", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=x
            )

    def guide(self, x):
        pyro.module(self.prefix + "encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, rho = self.encoder(x).chunk(2, -1)
            pyro.sample("latent", dist.Normal(loc, F.softplus(rho) + 1e-5).to_event(1))


def pyro_tutorial(train: torch.Tensor, batch: int):
    from torchvision import datasets, transforms

    vae = TutorialVAE().to(train.device)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LR}), loss=Trace_ELBO())
    root = resolve_root("fashion-mnist")
    binary = transforms.Compose([transforms.ToTensor(), lambda x: (x > 0.5).float().view(-1)])
    ds = datasets.FashionMNIST(root, train=True, transform=binary)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True)

    def batches():
        while True:
            for x, _ in loader:
                yield x.to(train.device), None

    return (lambda x, idx: svi.step(x)), batches()


def catalogue_pair(n: int, device, prefix: str = ""):
    """The catalogue's Bernoulli VAE and diagonal guide; ``prefix`` keeps the names of two
    pairs apart in the one param store."""
    arch, shape = ArchConfig(z_dim=Q, hidden=(H,)), DataShape(D, (1, 28, 28), n)
    model = MODELS["bernoulli"](arch, shape)
    model = VAE(model.decoder, Q, name=prefix + "model")
    guide = GUIDES["diag"](arch, shape, model)
    guide = AmortizedGuide(guide.net, guide.head, name=prefix + "guide")
    return model, guide


def fit_step(train: torch.Tensor, batch: int, jit: bool = False):
    model, guide = catalogue_pair(len(train), train.device, prefix="jit_" if jit else "")
    config = FitConfig(batch_size=batch, lr=LR, jit=jit, device=str(train.device))
    step = training_step(model, guide, train, config)
    return (lambda x, idx: step(x, idx, len(train))), index_batches(train, batch)


def index_batches(train: torch.Tensor, batch: int):
    while True:
        perm = torch.randperm(len(train), device=train.device)
        for idx in perm[: len(perm) // batch * batch].view(-1, batch):
            yield train[idx], idx


def timed_block(step, batches, steps: int, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


VARIANTS = {
    "hand": hand,
    "hand, fused Adam": lambda train, batch: hand(train, batch, fused=True),
    "pyro tutorial": pyro_tutorial,
    "fit": fit_step,
    "fit jit": lambda train, batch: fit_step(train, batch, jit=True),
}


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    device = resolve_device(args.device)
    train = load_dataset("fashion-mnist", binarize="static").train.to(device)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's tracer warnings
        variants = {name: make(train, args.batch_size) for name, make in VARIANTS.items()}
        for step, batches in variants.values():  # warm-up, and the JIT's compilation
            timed_block(step, batches, 5, device)
        rows = [
            {"repeat": r, "variant": name, "seconds_per_step": timed_block(*v, args.steps, device)}
            for r, (name, v) in itertools.product(range(args.repeats), variants.items())
        ]
    write(pd.DataFrame(rows), args, device)


def write(raw: pd.DataFrame, args, device) -> None:
    table = raw.groupby("variant", sort=False)["seconds_per_step"].median()
    table = table.to_frame("median_s_per_step").reset_index()
    table["ratio_to_hand"] = table["median_s_per_step"] / table["median_s_per_step"].iloc[0]
    table["device"] = device_name(device)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"step_time_{device.type}"
    table.to_csv(f"{stem}.csv", index=False)
    note = (
        f"784-400-50 Bernoulli VAE, Adam lr {LR}, batch {args.batch_size}, "
        f"{args.repeats} interleaved repeats of {args.steps} steps, medians; "
        f"torch {torch.__version__}, pyro {pyro.__version__}\n\n"
    )
    text = note + table.to_markdown(index=False, floatfmt=".4g") + "\n"
    Path(f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
