"""Seconds per training step, side by side in one run: ppvae's fit against the tools a user
would pick instead, on the CPU (or CUDA for the PyTorch rows).

Every variant trains the 784-400-50 Bernoulli VAE (softplus MLPs, diagonal Gaussian encoder)
with Adam at lr 1e-3 on statically binarized Fashion-MNIST (ppvae's loader):

- ``hand``: eager PyTorch written by hand: encoder, decoder, the analytic KL,
  ``torch.optim.Adam`` with its defaults, and a loop over shuffled index batches of a tensor
  on the device; ``hand, fused Adam``: the same with ``torch.optim.Adam(fused=True)``;
- ``pyro tutorial``: Pyro's VAE tutorial loop: ``SVI.step`` with ``Trace_ELBO`` and
  ``pyro.optim.Adam``, batches from torchvision's dataset through a ``DataLoader``;
- ``pythae trainer``: pythae's ``VAE`` (BCE reconstruction) with the same networks, one pass of
  the body of ``BaseTrainer.train_step`` per step (its DataLoader, forward, ``_optimizers_step``,
  ``loss.item()``);
- ``numpyro jit``: NumPyro's ``examples/vae.py`` (stax networks, ``Trace_ELBO``, ``svi.update``
  under ``jax.jit``, one call per step); ``numpyro jit, fori_loop``: the example's own epoch
  loop, a block of steps in one jitted ``lax.fori_loop`` (no Python between steps);
- ``fit`` and every other ``fit ...`` row: the step ``ppvae.fit`` takes
  (``ppvae.infer.fitting.training_step``) in each of its modes (:class:`ppvae.FitConfig`).

Each setting (threads x batch size) runs in its own subprocess, since JAX reads its thread
flags at import. There the variants' blocks of steps are interleaved round-robin over many
rounds, so load on a shared machine hits every variant alike; a row gives the median and
interquartile range of seconds per step (wall clock, and the process's CPU time), the ratio of
medians to ``numpyro jit`` measured in the same rounds, the seconds per epoch that follow from
it (steps of a 60000-image epoch times the median step, batch fetching included) and the
first call's seconds (compilation, for the compiled modes). A peer that cannot be imported or
run is a row that says why. Writes ``benchmarks/results/step_time_<device>.{csv,md}``::

    pip install -e .[bench]   # numpyro, jax[cpu], pythae
    python benchmarks/step_time.py [--threads 1 2] [--batch-sizes 128 1024] [--rounds 15] [--keep]
"""

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

# isort: off
import ppvae  # noqa: F401  (before torch, as in a ppvae user's script: OpenMP's passive wait)

# isort: on
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
REFERENCE = "numpyro jit"


class Unavailable(Exception):
    """A variant that cannot run here: its row says why."""


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
        return loss

    return step, index_batches(train, batch)


class TutorialVAE(nn.Module):
    """Pyro's tutorial VAE (examples/vae/vae.py), model and guide as Pyro writes them."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(D, H), nn.Softplus(), nn.Linear(H, 2 * Q))
        self.decoder = nn.Sequential(nn.Linear(Q, H), nn.Softplus(), nn.Linear(H, D))

    def model(self, x):
        pyro.module("tutorial_decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(x.shape[0], Q), 1.0).to_event(1))
            logits = self.decoder(z)
            pyro.sample(
                "obs", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=x
            )

    def guide(self, x):
        pyro.module("tutorial_encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, rho = self.encoder(x).chunk(2, -1)
            pyro.sample("latent", dist.Normal(loc, F.softplus(rho) + 1e-5).to_event(1))


def torchvision_loader(train: torch.Tensor, batch: int, collate=None):
    """Fashion-MNIST from torchvision's reader through a shuffling DataLoader, binarized per
    image as a tutorial does; ``train``'s device is where the batches go."""
    from torchvision import datasets, transforms

    binary = transforms.Compose([transforms.ToTensor(), lambda x: (x > 0.5).float().view(-1)])
    ds = datasets.FashionMNIST(resolve_root("fashion-mnist"), train=True, transform=binary)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch, shuffle=True, drop_last=True, collate_fn=collate
    )


def forever(loader, device):
    while True:
        for x in loader:
            yield (x[0].to(device) if isinstance(x, list | tuple) else x), None


def pyro_tutorial(train: torch.Tensor, batch: int):
    vae = TutorialVAE().to(train.device)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LR}), loss=Trace_ELBO())
    return (lambda x, idx: svi.step(x)), forever(torchvision_loader(train, batch), train.device)


def pythae_trainer(train: torch.Tensor, batch: int):
    try:
        from pythae.data.datasets import DatasetOutput
        from pythae.models import VAE as PythaeVAE
        from pythae.models import VAEConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder
        from pythae.trainers import BaseTrainer, BaseTrainerConfig
    except ImportError as err:
        raise Unavailable(f"pythae not installed ({err}): pip install -e .[bench]") from None

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(D, H), nn.Softplus(), nn.Linear(H, 2 * Q))

        def forward(self, x):
            loc, log_var = self.net(x).chunk(2, -1)
            return ModelOutput(embedding=loc, log_covariance=log_var)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(Q, H), nn.Softplus(), nn.Linear(H, D), nn.Sigmoid())

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z))

    config = VAEConfig(input_dim=(D,), latent_dim=Q, reconstruction_loss="bce")
    model = PythaeVAE(config, encoder=Encoder(), decoder=Decoder())

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(train)

        def __getitem__(self, i):
            return DatasetOutput(data=train[i])

    out = tempfile.mkdtemp(prefix="pythae_")
    trainer_config = BaseTrainerConfig(
        output_dir=out,
        per_device_train_batch_size=batch,
        learning_rate=LR,
        optimizer_cls="Adam",
        no_cuda=train.device.type != "cuda",
    )
    trainer = BaseTrainer(model, Images(), training_config=trainer_config)
    trainer.set_optimizer()
    trainer.model.train()
    n = len(train)

    def step(inputs, idx):  # the body of BaseTrainer.train_step's loop
        inputs = trainer._set_inputs_to_device(inputs)
        output = trainer.model(inputs, epoch=1, dataset_size=n, uses_ddp=False)
        trainer._optimizers_step(output)
        loss = output.loss.item()
        if loss != loss:
            raise ArithmeticError("NaN")
        return None

    def batches():
        while True:
            for inputs in trainer.train_loader:
                yield inputs, None

    return step, batches()


def numpyro_example(train: torch.Tensor, batch: int, fori_loop: bool = False):
    """NumPyro's examples/vae.py: stax encoder (Dense-Softplus, then a Dense for the location
    and a Dense-Exp for the scale), stax decoder (Dense-Softplus-Dense-Sigmoid), Trace_ELBO,
    Adam, ``svi.update`` under ``jax.jit``."""
    if train.device.type != "cpu":
        raise Unavailable("the NumPyro rows run on the CPU only")
    try:
        import jax
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as ndist
        from jax.example_libraries import stax
        from numpyro.infer import SVI as NSVI
        from numpyro.infer import Trace_ELBO as NTrace_ELBO
    except ImportError as err:
        raise Unavailable(f"numpyro/jax not installed ({err}): pip install -e .[bench]") from None

    encoder = stax.serial(
        stax.Dense(H, W_init=stax.randn()),
        stax.Softplus,
        stax.FanOut(2),
        stax.parallel(
            stax.Dense(Q, W_init=stax.randn()),
            stax.serial(stax.Dense(Q, W_init=stax.randn()), stax.Exp),
        ),
    )
    decoder = stax.serial(
        stax.Dense(H, W_init=stax.randn()),
        stax.Softplus,
        stax.Dense(D, W_init=stax.randn()),
        stax.Sigmoid,
    )

    def model(x):
        decode = numpyro.module("decoder", decoder, (batch, Q))
        with numpyro.plate("batch", batch):
            z = numpyro.sample("z", ndist.Normal(0, 1).expand([Q]).to_event(1))
            numpyro.sample("obs", ndist.Bernoulli(decode(z)).to_event(1), obs=x)

    def guide(x):
        encode = numpyro.module("encoder", encoder, (batch, D))
        with numpyro.plate("batch", batch):
            loc, scale = encode(x)
            numpyro.sample("z", ndist.Normal(loc, scale).to_event(1))

    svi = NSVI(model, guide, numpyro.optim.Adam(LR), NTrace_ELBO())
    data = jnp.asarray(train.cpu().numpy())
    state = [svi.init(jax.random.PRNGKey(0), data[:batch])]

    @jax.jit
    def update(state, data, idx):
        return svi.update(state, data[idx])

    @jax.jit
    def block(state, data, idx):  # the example's epoch_train: a loop without Python
        def body(i, val):
            state, total = val
            state, loss = svi.update(state, data[idx[i]])
            return state, total + loss

        return jax.lax.fori_loop(0, idx.shape[0], body, (state, 0.0))

    def step(x, idx):
        state[0], loss = update(state[0], data, jnp.asarray(idx.numpy()))
        return loss

    def steps(idx):  # a whole block of (steps, batch) indices
        state[0], loss = block(state[0], data, jnp.asarray(idx.numpy()))
        return loss

    step.block = steps if fori_loop else None
    step.finish = jax.block_until_ready
    return step, index_batches(train, batch)


def catalogue_pair(n: int, device, prefix: str = ""):
    """The catalogue's Bernoulli VAE and diagonal guide; ``prefix`` keeps the names of two
    pairs apart in the one param store."""
    arch, shape = ArchConfig(z_dim=Q, hidden=(H,)), DataShape(D, (1, 28, 28), n)
    model = MODELS["bernoulli"](arch, shape)
    model = VAE(model.decoder, Q, name=prefix + "model")
    guide = GUIDES["diag"](arch, shape, model)
    guide = AmortizedGuide(guide.net, guide.head, name=prefix + "guide")
    return model, guide


def fit_step(train: torch.Tensor, batch: int, **mode):
    prefix = "_".join(f"{k}{v}" for k, v in mode.items())
    model, guide = catalogue_pair(len(train), train.device, prefix=prefix)
    config = FitConfig(batch_size=batch, lr=LR, device=str(train.device), **mode)
    step = training_step(model, guide, train, config)

    def run(x, idx):
        return step(x, idx, len(train))

    if not mode:  # the default FitConfig: auto, resolved for a 100-epoch run
        run.label = f"fit (default: auto -> {'jit' if step.jit else 'eager'})"
    return run, index_batches(train, batch)


def index_batches(train: torch.Tensor, batch: int):
    while True:
        perm = torch.randperm(len(train), device=train.device)
        for idx in perm[: len(perm) // batch * batch].view(-1, batch):
            yield train[idx], idx


def timed_block(step, batches, steps: int, device) -> tuple[float, float]:
    """(wall, process CPU) seconds per step over ``steps`` steps."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    finish = getattr(step, "finish", lambda out: None)
    block = getattr(step, "block", None)
    wall, cpu = time.perf_counter(), time.process_time()
    if block is not None:
        idx = torch.stack([next(batches)[1] for _ in range(steps)])
        out = block(idx)
    else:
        for _ in range(steps):
            out = step(*next(batches))
    finish(out)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


VARIANTS = {
    "numpyro jit": numpyro_example,
    "numpyro jit, fori_loop": lambda train, batch: numpyro_example(train, batch, True),
    "hand": hand,
    "hand, fused Adam": lambda train, batch: hand(train, batch, fused=True),
    "pyro tutorial": pyro_tutorial,
    "pythae trainer": pythae_trainer,
    "fit": fit_step,
    "fit jit": lambda train, batch: fit_step(train, batch, jit=True),
    "fit no-jit": lambda train, batch: fit_step(train, batch, jit=False),
}


def worker(args) -> list[dict]:
    """One setting: every variant built, warmed up, then timed round-robin."""
    torch.set_num_threads(args.threads[0])
    device = resolve_device(args.device)
    train = load_dataset("fashion-mnist", binarize="static").train.to(device)
    torch.manual_seed(0)
    variants, rows, first = {}, [], {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's tracer warnings
        for name, make in VARIANTS.items():
            if args.only and name not in args.only:
                continue
            try:
                built = make(train, args.batch_size)
                name = getattr(built[0], "label", name)  # the default fit: its resolved mode
                variants[name] = built
                # the first step compiles, if anything does (a fori_loop block: its shape)
                n = args.steps if getattr(variants[name][0], "block", None) else 1
                first[name] = timed_block(*variants[name], n, device)[0] * n
                timed_block(*variants[name], args.steps, device)  # warm-up
            except Exception as err:  # a peer that cannot run is a row saying why
                variants.pop(name, None)
                why = str(err).splitlines()[0] if str(err) else type(err).__name__
                rows.append({"variant": name, "note": why[:150]})
        for r in range(args.rounds):
            for name, v in variants.items():
                wall, cpu = timed_block(*v, args.steps, device)
                rows.append({"variant": name, "round": r, "wall": wall, "cpu": cpu})
    for row in rows:
        row.update(first_call_s=first.get(row["variant"]))
    return rows


def summarize(raw: pd.DataFrame, threads: int, batch: int) -> pd.DataFrame:
    timed = raw.dropna(subset=["wall"])
    q = timed.groupby("variant", sort=False)[["wall", "cpu"]].quantile([0.25, 0.5, 0.75])
    q = q.unstack()
    table = pd.DataFrame(
        {
            "ms_per_step": 1e3 * q[("wall", 0.5)],
            "iqr_ms": 1e3 * (q[("wall", 0.75)] - q[("wall", 0.25)]),
            "cpu_ms_per_step": 1e3 * q[("cpu", 0.5)],
        }
    )
    ref = table["ms_per_step"].get(REFERENCE, float("nan"))
    table[f"ratio_to_{REFERENCE.replace(' ', '_')}"] = table["ms_per_step"] / ref
    table["s_per_epoch"] = table["ms_per_step"] / 1e3 * (60000 // batch)
    table["first_call_s"] = timed.groupby("variant", sort=False)["first_call_s"].first()
    table = table.reset_index()
    if "note" in raw:
        notes = raw.dropna(subset=["note"])[["variant", "note"]]
        table = pd.concat([table, notes], ignore_index=True)
    table.insert(0, "threads", threads)
    table.insert(1, "batch", batch)
    return table


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def jax_env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    return env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=20, help="steps per timed block")
    p.add_argument("--only", nargs="*", help="run only these variants")
    p.add_argument(
        "--keep", action="store_true", help="keep the saved rows of the settings not run"
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=128, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        Path(args.out).write_text(json.dumps(worker(args)))
        return
    tables = []
    for threads in args.threads:
        for batch in args.batch_sizes:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                cmd = [sys.executable, __file__, "--worker", "--device", args.device]
                cmd += ["--threads", str(threads), "--batch-size", str(batch), "--out", out.name]
                cmd += ["--rounds", str(args.rounds), "--steps", str(args.steps)]
                cmd += ["--only", *args.only] if args.only else []
                subprocess.run(cmd, env=jax_env(threads), check=True, stdout=subprocess.DEVNULL)
                raw = pd.DataFrame(json.loads(Path(out.name).read_text()))
            table = summarize(raw, threads, batch)
            table.insert(2, "rounds_x_steps", f"{args.rounds}x{args.steps}")
            tables.append(table)
            print(tables[-1].to_markdown(index=False, floatfmt=".4g"), flush=True)
    write(pd.concat(tables, ignore_index=True), args, resolve_device(args.device))


def write(table: pd.DataFrame, args, device) -> None:
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"step_time_{device.type}"
    table["device"] = device_name(device)
    if args.keep and Path(f"{stem}.csv").exists():  # settings not re-measured keep their rows
        old = pd.read_csv(f"{stem}.csv")
        new = set(zip(table.threads, table.batch, strict=True))
        kept = [(t, b) not in new for t, b in zip(old.threads, old.batch, strict=True)]
        table = pd.concat([old[kept], table], ignore_index=True)
        table = table.sort_values(["threads", "batch"], kind="stable")
    table.to_csv(f"{stem}.csv", index=False)
    versions = f"torch {torch.__version__}, pyro {pyro.__version__}"
    for name in ("jax", "numpyro", "pythae"):
        try:
            versions += f", {name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            versions += f", {name} not installed"
    note = (
        f"784-400-50 Bernoulli VAE, Adam lr {LR}, statically binarized Fashion-MNIST; "
        f"{device_name(device)}; each (threads, batch) setting in its own process, "
        f"interleaved rounds x steps per variant as stated; median ms per "
        f"step (wall, and the process's CPU time), interquartile range, ratio of medians to "
        f"'{REFERENCE}'; s_per_epoch = 60000 // batch steps x the median step (batch fetching "
        f"included); first_call_s = the first step (compilation); {versions}. "
        f"One thread: torch.set_num_threads(1) and XLA_FLAGS=--xla_cpu_multi_thread_eigen=false "
        f"intra_op_parallelism_threads=1. The script imports ppvae first, so every torch row "
        f"runs with ppvae's OMP_WAIT_POLICY=PASSIVE (ppvae/threads.py).\n\n"
    )
    text = note + table.drop(columns="device").to_markdown(index=False, floatfmt=".4g") + "\n"
    Path(f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
