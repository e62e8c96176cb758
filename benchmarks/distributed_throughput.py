"""Training throughput with 1 process against N processes (``torchrun``), side by side.

Each variant runs ``ppvae train`` on statically binarized Fashion-MNIST (the 784-400-50
Bernoulli VAE, global batch 256, Adam lr 1e-3) through ``python -m torch.distributed.run``
with ``--nproc-per-node`` 1 or N, for a few epochs; the runs alternate and repeat, so load on
a noisy machine hits both alike. Throughput is training examples per second from the epochs'
own timings in ``history.csv`` (the first epoch, with its warm-up, is left out). The CPU
threads are shared out: one process gets all of them, N processes get 1/N each.

Writes ``benchmarks/results/distributed_throughput_<device>.{csv,md}``::

    python benchmarks/distributed_throughput.py [--ranks 2] [--device cpu] [--repeats 3]
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

RESULTS = Path(__file__).parent / "results"
ARGS = [
    "--dataset", "fashion-mnist", "--binarize", "static", "--hidden", "400",
    "--z-dim", "50", "--batch-size", "256", "--lr", "0.001", "--eval-samples", "1",
]  # fmt: skip


def run(ranks: int, epochs: int, device: str, threads: int) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}"]
        cmd += ["-m", "ppvae", "train", "--out", str(out), "--epochs", str(epochs)]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // ranks))}
        proc = subprocess.run([*cmd, *ARGS, "--device", device], env=env, capture_output=True)
        if proc.returncode:
            raise SystemExit(proc.stderr.decode()[-2000:])
        return pd.read_csv(out / "history.csv")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    threads = torch.get_num_threads() if args.device == "cpu" else 1
    rows = []
    for repeat in range(args.repeats):
        for ranks in (1, args.ranks):
            history = run(ranks, args.epochs, args.device, threads)
            for seconds in history.seconds.iloc[1:]:
                rows.append({"repeat": repeat, "ranks": ranks, "epoch_seconds": seconds})
    write(pd.DataFrame(rows), args, threads)


def write(raw: pd.DataFrame, args, threads: int) -> None:
    n = 60000  # Fashion-MNIST's training examples, one epoch
    table = raw.groupby("ranks")["epoch_seconds"].median().to_frame("median_epoch_seconds")
    table["examples_per_second"] = n / table["median_epoch_seconds"]
    table["speedup"] = table["examples_per_second"] / table["examples_per_second"].iloc[0]
    table = table.reset_index()
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    table["device"] = f"{device}, {threads} threads" if args.device == "cpu" else device
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"distributed_throughput_{args.device.split(':')[0]}"
    table.to_csv(f"{stem}.csv", index=False)
    note = (
        f"ppvae train on Fashion-MNIST (static binarization), 784-400-50 Bernoulli VAE, global "
        f"batch 256; {args.repeats} alternating repeats of {args.epochs} epochs per variant, "
        "first epoch of each run left out; medians. Launched with python -m "
        "torch.distributed.run --nproc-per-node R -m ppvae train ...\n\n"
    )
    text = note + table.to_markdown(index=False, floatfmt=".4g") + "\n"
    Path(f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
