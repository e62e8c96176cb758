"""Diagonal, full-covariance and flow guides on Fashion-MNIST, and the gradient-variance table.

Static binarization, z = 20, Bernoulli decoder, and the same MLP encoder trunk (784-400) for
every guide: only the head differs. Each guide is trained with the same epochs and seed, then
reports its test ELBO, the importance-sampled test log p(x) (K = --eval-samples, with its
Monte Carlo standard error) and the amortization gap (per-datapoint refinement of
--refine-size test examples). The gradient table compares reparameterized, score-function and
score-function-with-baseline gradients at the trained diagonal guide.

Writes ``benchmarks/results/guides_fashion_mnist.{csv,md}`` and
``benchmarks/results/gradients_fashion_mnist.{csv,md}``.

    python benchmarks/guides_fashion_mnist.py [--epochs 50] [--device auto] [--smoke]
"""

import argparse
import time
from pathlib import Path

import pandas as pd
import pyro

from ppvae.config import ArchConfig, DataShape, atomic_write_text
from ppvae.data import load_dataset
from ppvae.evaluation.metrics import elbo_terms, log_likelihood
from ppvae.experiments.gradients import gradient_estimates, gradient_table, to_markdown
from ppvae.guides import GUIDES
from ppvae.guides.refine import amortization_gap
from ppvae.infer.fitting import FitConfig, fit, resolve_device
from ppvae.models import MODELS

RESULTS = Path(__file__).parent / "results"
GUIDE_NAMES = ("diag", "full-cov", "flow")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-samples", type=int, default=1000, help="K for log p(x)")
    p.add_argument("--test-size", type=int, default=10000, help="test examples evaluated")
    p.add_argument("--refine-size", type=int, default=500, help="test examples refined")
    p.add_argument("--refine-steps", type=int, default=500)
    p.add_argument("--num-estimates", type=int, default=500, help="gradient estimates")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data-dir", help="Fashion-MNIST root (else $PPVAE_DATA_DIR, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.eval_samples, args.test_size = 1, 20, 200
        args.refine_size, args.refine_steps, args.num_estimates = 20, 20, 20
    return args


def load(args):
    data = load_dataset("fashion-mnist", data_dir=args.data_dir, binarize="static")
    if args.smoke:
        data = data._replace(train=data.train[:2000])
    return data


def train_guide(name: str, data, args, device):
    arch = ArchConfig(z_dim=20, hidden=(400,), flows=2, context_dim=20)
    shape = DataShape(data.train.shape[1], data.image_shape, data.train.shape[0])
    pyro.set_rng_seed(args.seed)
    model = MODELS["bernoulli"](arch, shape)
    guide = GUIDES[name](arch, shape, model)
    config = FitConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        device=str(device),
    )  # fmt: skip
    start = time.perf_counter()
    fit(model, guide, data, config, progress=False)
    return model, guide, time.perf_counter() - start


def guide_row(name, model, guide, data, args, device, seconds) -> dict[str, object]:
    test = data.test[: args.test_size].to(device)
    terms = elbo_terms(model, guide, test, num_samples=10)
    ll = log_likelihood(model, guide, test, num_samples=args.eval_samples)
    gap = amortization_gap(
        model, guide, test[: args.refine_size], steps=args.refine_steps, eval_samples=100
    ).iloc[0]
    n = len(test)
    return {
        "guide": name,
        "test_elbo": terms.elbo.mean().item(),
        "test_kl": terms.kl.mean().item(),
        "log_px": ll.log_px.mean().item(),
        "log_px_stderr": (ll.stderr.pow(2).sum().sqrt() / n).item(),
        "amortized_elbo_refine_subset": gap.amortized_elbo,
        "refined_elbo_refine_subset": gap.refined_elbo,
        "amortization_gap": gap.gap,
        "amortization_gap_stderr": gap.gap_stderr,
        "num_params": sum(p.numel() for p in guide.parameters()),
        "train_seconds": seconds,
    }


def write(table: pd.DataFrame, stem: str, header: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{stem}.csv", table.to_csv(index=False))
    atomic_write_text(RESULTS / f"{stem}.md", header + "\n\n" + to_markdown(table))


def gradients(model, guide, data, args, device) -> pd.DataFrame:
    x = data.test[:64].to(device)
    moments = gradient_estimates(
        model, guide, x, num_estimates=args.num_estimates, warmup=50, seed=args.seed
    )
    return gradient_table(moments)


def main(argv=None) -> None:
    args = parse(argv)
    device = resolve_device(args.device)
    data = load(args)
    setup = (
        f"Fashion-MNIST, static binarization, z=20, encoder 784-400, Bernoulli decoder; "
        f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, seed {args.seed}; "
        f"test examples {min(args.test_size, len(data.test))}, K={args.eval_samples}; "
        f"refinement: {args.refine_size} examples x {args.refine_steps} steps; device {device}"
        + (" (SMOKE: tiny sizes, numbers meaningless)" if args.smoke else "")
    )
    rows = []
    for name in GUIDE_NAMES:  # the table is rewritten after each guide: a cut-off run keeps it
        model, guide, seconds = train_guide(name, data, args, device)
        rows.append(guide_row(name, model, guide, data, args, device, seconds))
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
        write(pd.DataFrame(rows), "guides_fashion_mnist", setup)
        if name == "diag":
            write_gradients(model, guide, data, args, device, setup)


def write_gradients(model, guide, data, args, device, setup: str) -> None:
    grads = gradients(model, guide, data, args, device)
    grad_setup = (
        f"ELBO gradient w.r.t. the diag guide's parameters at the trained model, one fixed "
        f"minibatch of 64 test examples, {args.num_estimates} estimates per estimator "
        f"(score-baseline after 50 warm-up estimates). " + setup
    )
    write(grads, "gradients_fashion_mnist", grad_setup)
    print(to_markdown(grads[grads["group"] == "total"]), flush=True)


if __name__ == "__main__":
    main()
