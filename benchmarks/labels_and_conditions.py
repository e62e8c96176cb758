"""The M2 accuracy table and the CVAE likelihood table on digits and Fashion-MNIST (issue 19).

M2 (``ppvae.experiments.labelled``): for 100 / 600 / 1000 / 3000 class-balanced labels and 5
label draws, M2's test accuracy, the labels-only classifier's test accuracy and M2's test
log p(x) (y summed out, importance-sampled). The summary gives the mean and a 95% interval
(mean +- t_{0.975, n-1} s / sqrt(n)) over the draws. A cell that cannot exist (3000 labels on
digits' 1437 training rows) is a row whose ``status`` says why.

CVAE (``ppvae.experiments.conditions``): for 1 / 2 / 3 given quadrants, the CVAE's
importance-sampled conditional log-likelihood log p(y | x) +- SE, the plain network's
Bernoulli log-likelihood and the CVAE's negative ELBO (what Pyro's example prints).

Every finished cell is one CSV row, written at once; a rerun skips the cells already in the CSV
(``--fresh`` starts over), so the job can be stopped and resumed cell by cell. The markdown
files are rebuilt from the CSVs after every cell. A progress bar runs over the cells.

    python benchmarks/labels_and_conditions.py [--tables m2 cvae] [--datasets digits ...]
        [--smoke]
"""

import argparse
import sys
from pathlib import Path

import pandas as pd
from scipy import stats
from tqdm.auto import tqdm

from ppvae.config import atomic_write_text
from ppvae.errors import PPVAEError, first_line
from ppvae.experiments.conditions import ConditionsConfig, cvae_row
from ppvae.experiments.labelled import LabelsConfig, m2_row

RESULTS = Path(__file__).parent / "results"
LABELS, DRAWS, QUADRANTS = (100, 600, 1000, 3000), 5, (1, 2, 3)

SIZES = {  # what fits two shared CPU cores; stated in the markdown
    "digits": {
        "m2": LabelsConfig(z_dim=2, hidden=(256,), epochs=100, eval_samples=100),
        "cvae": ConditionsConfig(
            z_dim=20, hidden=(256, 256), epochs=150, baseline_epochs=50, eval_samples=100
        ),
    },
    "fashion-mnist": {
        "m2": LabelsConfig(
            z_dim=50, hidden=(256,), epochs=20, eval_samples=50, train_size=5000,
            test_size=2000,
        ),
        "cvae": ConditionsConfig(
            z_dim=20, hidden=(256, 256), epochs=10, baseline_epochs=10, eval_samples=50,
            train_size=10000, test_size=2000,
        ),
    },
}  # fmt: skip
SMOKE = {
    "m2": LabelsConfig(z_dim=2, hidden=(16,), epochs=1, eval_samples=2, train_size=300,
                       test_size=50),
    "cvae": ConditionsConfig(z_dim=2, hidden=(16,), epochs=1, baseline_epochs=1, eval_samples=2,
                             train_size=300, test_size=50),
}  # fmt: skip


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", nargs="+", default=["m2", "cvae"], choices=["m2", "cvae"])
    p.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"])
    p.add_argument("--draws", type=int, default=DRAWS, help="label draws per M2 cell")
    p.add_argument("--labels", type=int, nargs="+", default=list(LABELS), help="M2 label counts")
    p.add_argument("--data-dir", help="Fashion-MNIST root (else $PPVAE_DATA_DIR, ...)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--fresh", action="store_true", help="forget the rows already written")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script runs")
    return p.parse_args(argv)


def cells(args) -> list[tuple]:
    """(table, dataset, setting, draw) for every cell asked for, in table order."""
    found = []
    for table in args.tables:
        for dataset in args.datasets:
            if table == "m2":
                found += [("m2", dataset, n, d) for n in args.labels for d in range(args.draws)]
            else:
                found += [("cvae", dataset, q, 0) for q in QUADRANTS]
    return found


def config_for(table: str, dataset: str, smoke: bool):
    return SMOKE[table] if smoke else SIZES[dataset][table]


def run_cell(cell: tuple, config, data_dir) -> dict:
    table, dataset, setting, draw = cell
    try:
        if table == "m2":
            row = m2_row(dataset, setting, draw, config, data_dir)
        else:
            row = cvae_row(dataset, setting, config, data_dir)
        return {**row, "status": "ok"}
    except PPVAEError as err:  # a cell that cannot exist says why, the others go on
        key = "labels" if table == "m2" else "quadrants"
        return {"dataset": dataset, key: setting, "draw": draw, "status": first_line(err)}


def done_keys(path: Path, table: str) -> set[tuple]:
    if not path.exists():
        return set()
    frame = pd.read_csv(path)
    key = "labels" if table == "m2" else "quadrants"
    draws = frame["draw"] if "draw" in frame else [0] * len(frame)
    keys = zip(frame.dataset, frame[key], draws, strict=True)
    return {(table, d, int(s), int(r)) for d, s, r in keys}


def append_row(path: Path, row: dict) -> None:
    frame = pd.read_csv(path) if path.exists() else pd.DataFrame()
    frame = pd.concat([frame, pd.DataFrame([row])], ignore_index=True)
    atomic_write_text(path, frame.to_csv(index=False))


def interval(values: pd.Series) -> str:
    """'mean [lo, hi]' with a t-based 95% interval over the draws (the mean alone for one)."""
    v = values.dropna()
    if len(v) < 2:
        return f"{v.mean():.3f}" if len(v) else "n/a"
    half = stats.t.ppf(0.975, len(v) - 1) * v.std() / len(v) ** 0.5
    return f"{v.mean():.3f} [{v.mean() - half:.3f}, {v.mean() + half:.3f}]"


def m2_markdown(frame: pd.DataFrame, smoke: bool) -> str:
    rows = []
    for (dataset, labels), g in frame.groupby(["dataset", "labels"], sort=False):
        ok = g[g.status == "ok"]
        if ok.empty:
            rows.append({"dataset": dataset, "labels": labels, "draws": 0,
                         "status": g.status.iloc[0]})  # fmt: skip
            continue
        rows.append({
            "dataset": dataset, "labels": labels, "draws": len(ok),
            "m2_accuracy": interval(ok.m2_accuracy),
            "labels_only_accuracy": interval(ok.classifier_accuracy),
            "M2 - labels-only": interval(ok.m2_accuracy - ok.classifier_accuracy),
            "log_px (nats)": interval(ok.log_px), "max log_px SE": f"{ok.log_px_se.max():.4f}",
            "status": "ok",
        })  # fmt: skip
    table = pd.DataFrame(rows).fillna("").to_markdown(index=False)
    return f"# M2 on digits and Fashion-MNIST\n\n{sizes_text('m2', smoke)}\n\n{table}\n"


def plus_minus(means: pd.Series, errors: pd.Series) -> list[str]:
    return [f"{m:.3f} +- {s:.3f}" for m, s in zip(means, errors, strict=True)]


def cvae_markdown(frame: pd.DataFrame, smoke: bool) -> str:
    ok = frame[frame.status == "ok"].copy()
    ok["cvae log p(y|x) (IS)"] = plus_minus(ok.cvae_log_lik, ok.cvae_log_lik_se)
    ok["plain network log p(y|x)"] = plus_minus(ok.baseline_log_lik, ok.baseline_log_lik_se)
    ok["cvae negative ELBO (Pyro's figure)"] = ok.cvae_neg_elbo.map(lambda v: f"{v:.3f}")
    columns = ["dataset", "quadrants", "cvae log p(y|x) (IS)", "plain network log p(y|x)",
               "cvae negative ELBO (Pyro's figure)", "fit_seconds"]  # fmt: skip
    table = ok[columns].to_markdown(index=False, floatfmt=".3f")
    return f"# CVAE quadrant completion\n\n{sizes_text('cvae', smoke)}\n\n{table}\n"


def sizes_text(table: str, smoke: bool) -> str:
    if smoke:
        return f"SMOKE sizes (not results): {SMOKE[table]}"
    lines = [f"- {d}: {SIZES[d][table]}" for d in SIZES]
    note = (
        "Per test example, in nats. The SE is the importance sampler's Monte Carlo standard "
        "error of the mean; 95% intervals are over label draws (t distribution). "
        "The plain network's SE is the spread over test examples. "
        "train_size/test_size None = the whole split; otherwise a seeded subset. "
        "Run on 2 shared CPU cores. M2 is trained by one ppvae fit call, "
        "fit(model, guide, (x, y), aux=[(*classifier_pair(guide), aux_weight)]) "
        "(ppvae.experiments.labelled.train_m2): each batch holds labelled and unlabelled rows "
        "in proportion, each group scaled by N_group/B_group, one Adam over the labelled ELBO, "
        "the enumerated unlabelled ELBO and the auxiliary classifier loss. The labels-only "
        "classifier is the same q(y|x) network trained by cross-entropy on the labelled rows "
        "for epochs * ceil(N/B) steps (M2's fit takes epochs * (N // B): up to one step more "
        "an epoch for the labels-only network). 'M2 - labels-only' is the paired difference "
        "over the same draws. "
        "The CVAE is trained by one ppvae fit call after its plain network."
    )
    return "Sizes:\n\n" + "\n".join(lines) + "\n\n" + note


def main(argv=None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_smoke" if args.smoke else ""
    paths = {t: args.out / f"{t}_labels_and_conditions{suffix}.csv" for t in ("m2", "cvae")}
    if args.fresh:  # only the tables asked for: --tables m2 --fresh keeps the CVAE rows
        for table in args.tables:
            paths[table].unlink(missing_ok=True)
    done = set().union(*(done_keys(paths[t], t) for t in args.tables))
    todo = [c for c in cells(args) if c not in done]
    for cell in (bar := tqdm(todo, unit="cell", file=sys.stderr)):
        bar.set_postfix_str(" ".join(map(str, cell)))
        table, dataset = cell[:2]
        append_row(paths[table], run_cell(cell, config_for(table, dataset, args.smoke),
                                          args.data_dir))  # fmt: skip
        frame = pd.read_csv(paths[table])
        text = (m2_markdown if table == "m2" else cvae_markdown)(frame, args.smoke)
        atomic_write_text(paths[table].with_suffix(".md"), text)
    print("rows in " + ", ".join(str(paths[t]) for t in args.tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
