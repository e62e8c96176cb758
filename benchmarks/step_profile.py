"""Where one training step's time goes on the CPU: torch.profiler's self time per operator,
in ms per step, for ppvae's fit step (each mode) and the hand-written PyTorch step with fused
Adam, the 784-400-50 Bernoulli VAE of ``step_time.py`` at one thread. Writes
``benchmarks/results/step_profile_cpu.md``::

    python benchmarks/step_profile.py [--batch-size 128] [--steps 50] [--top 14]
"""

import argparse
import warnings
from pathlib import Path

import pandas as pd
import torch
from step_time import RESULTS, device_name, fit_step, hand
from torch.profiler import ProfilerActivity, profile

from ppvae.data import load_dataset

VARIANTS = {
    "hand, fused Adam": lambda train, batch: hand(train, batch, fused=True),
    "fit": fit_step,
    "fit jit": lambda train, batch: fit_step(train, batch, jit=True),
}
MATMUL = {"aten::mm", "aten::addmm"}


def per_op(step, batches, steps: int) -> pd.Series:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(*next(batches))
    ms = {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}
    return pd.Series(ms)


def interleaved(variants: dict, rounds: int, steps: int) -> pd.DataFrame:
    """Each operator's median over ``rounds`` round-robin rounds of ``steps`` profiled steps
    per variant, so the machine's load hits every variant alike."""
    for step, batches in variants.values():
        for _ in range(10):  # warm-up, and jit's tracing
            step(*next(batches))
    runs = {name: [] for name in variants}
    for _ in range(rounds):
        for name, v in variants.items():
            runs[name].append(per_op(*v, steps))
    return pd.DataFrame(
        {name: pd.DataFrame(r).fillna(0.0).median() for name, r in runs.items()}
    ).fillna(0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=14)
    args = p.parse_args()
    torch.set_num_threads(1)
    train = load_dataset("fashion-mnist", binarize="static").train
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = {name: make(train, args.batch_size) for name, make in VARIANTS.items()}
        table = interleaved(built, args.rounds, args.steps)
    total = table.sum()
    table = table.sort_values("fit", ascending=False)
    top = table.head(args.top)
    rows = pd.concat(
        [
            top,
            pd.DataFrame(
                {
                    "matrix products (mm, addmm)": table.loc[table.index.isin(MATMUL)].sum(),
                    "every other operator": total - table.loc[table.index.isin(MATMUL)].sum(),
                    "total self time": total,
                }
            ).T,
        ]
    )
    note = (
        f"torch.profiler self CPU ms per step (the profiler's overhead included), batch "
        f"{args.batch_size}, one thread, median over {args.rounds} interleaved rounds of "
        f"{args.steps} steps per variant, after 10 warm-up steps; "
        f"{device_name(torch.device('cpu'))}; torch {torch.__version__}\n\n"
    )
    text = note + rows.to_markdown(floatfmt=".3f") + "\n"
    Path(RESULTS / "step_profile_cpu.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
