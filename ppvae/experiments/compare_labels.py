"""``ppvae compare``'s tables for models that take more than x: semi-supervised M2 with
``--labels N`` and the conditional VAE with ``--quadrants K``.

With ``labels`` set (:class:`~ppvae.experiments.compare.CompareConfig`), the data is the dataset
(seeded subsets, pixels in [0, 1], not dequantized) with ``labels`` class-balanced training
labels, drawn with ``seed`` (:func:`ppvae.experiments.labelled.labelled_data`), and the rows
(:data:`LABEL_METHODS`) are:

- ``m2``: the M2 VAE trained semi-supervised with its auxiliary classifier
  (:func:`~ppvae.experiments.labelled.train_m2`);
- ``labels-only``: the same q(y | x) network trained by cross-entropy on the labelled rows
  alone (:func:`~ppvae.experiments.labelled.train_classifier`).

With ``quadrants`` set, the data is quadrant completion (see ``quadrants`` of the image, predict
the others; :func:`ppvae.experiments.conditions.completion_data`), and the rows
(:data:`QUADRANT_METHODS`) are:

- ``cvae``: the CVAE's conditional log p(y | x) of the hidden pixels, importance-sampled with
  q(z | x, y) as proposal (K = ``eval_samples``), with its Monte Carlo standard error;
- ``cvae-elbo``: the CVAE's ELBO, a lower bound on the same log p(y | x) (``elbo_samples``
  Monte Carlo samples per example); Pyro's ``examples/cvae`` prints minus this number as its
  "negative conditional log-likelihood";
- ``baseline``: the plain network's Bernoulli log-likelihood of the hidden pixels, exact.

The CVAE is built on the trained plain network, so one training
(:func:`~ppvae.experiments.conditions.train_cvae`) makes all three rows: it is done once per run,
on the first of them, and shared; each row's ``fit_seconds`` is that one training. A row
refitted by ``--resume`` trains both networks again, with the same seed.
"""

import functools
import math
from collections.abc import Callable

import pandas as pd

from ppvae.data import Dataset
from ppvae.experiments.conditions import (
    ConditionsConfig,
    completion_data,
    score_cvae,
    train_cvae,
)
from ppvae.experiments.labelled import (
    LabelsConfig,
    accuracy,
    labelled_data,
    log_px_summed,
    train_classifier,
    train_m2,
)
from ppvae.experiments.rows import OK, fit_table, score_row, timed

#: The columns of ``ppvae compare --labels N``'s table, in order.
LABEL_COLUMNS = ["method", "accuracy", "log_px", "log_px_stderr", "estimator", "fit_seconds",
                 "status"]  # fmt: skip

#: The columns of ``ppvae compare --quadrants K``'s table, in order.
QUADRANT_COLUMNS = ["method", "log_py_x", "log_py_x_stderr", "estimator", "fit_seconds",
                    "status"]  # fmt: skip

#: What each column of the two tables is, for the markdown legend.
COLUMN_NOTES = {
    "accuracy": "share of the test rows whose most probable class under the classifier "
    "q(y | x) is the true label",
    "log_px": "M2's test log p(x) = log sum_y p(x, y), y summed out exactly, each p(x, y) "
    "importance-sampled with q(z | x, y), in nats per test example (n/a: no generative model)",
    "log_px_stderr": "the Monte Carlo standard error of log_px (delta method over the classes)",
    "log_py_x": "the test conditional log-likelihood log p(y | x) of the hidden pixels y given "
    "the seen quadrants x, in nats per test example, higher is better",
    "log_py_x_stderr": "its Monte Carlo standard error (0: exact; n/a: not estimated); not the "
    "spread over test examples",
    "estimator": "how the log-likelihood is computed",
    "fit_seconds": "training only, not scoring (quadrants: the one training of the plain "
    "network and the CVAE shared by the three rows)",
    "status": "ok, or failed: <why> / interrupted (--resume fits those rows again)",
}


def labels_config(config) -> LabelsConfig:
    """The :class:`~ppvae.experiments.labelled.LabelsConfig` of ``config`` (a CompareConfig):
    its network sizes, SVI settings, K, subsets and seed; the other fields keep their
    defaults (e.g. ``aux_weight``)."""
    return LabelsConfig(
        z_dim=config.z_dim, hidden=config.hidden, epochs=config.epochs,
        batch_size=config.batch_size, lr=config.lr, eval_samples=config.eval_samples,
        train_size=config.train_size, test_size=config.test_size, seed=config.seed,
    )  # fmt: skip


def conditions_config(config) -> ConditionsConfig:
    """The :class:`~ppvae.experiments.conditions.ConditionsConfig` of ``config`` (a
    CompareConfig): the plain network trains for as many epochs as the CVAE."""
    return ConditionsConfig(
        z_dim=config.z_dim, hidden=config.hidden, epochs=config.epochs,
        baseline_epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
        eval_samples=config.eval_samples, elbo_samples=config.elbo_samples,
        train_size=config.train_size, test_size=config.test_size, seed=config.seed,
    )  # fmt: skip


def table_data(config) -> Dataset:
    """The data of the ``--labels`` table (labelled with ``config.seed`` as the label draw) or
    of the ``--quadrants`` table, subsampled as ``config`` says.

    Raises
    ------
    DataError
        Labels that cannot be class-balanced, more labels than training rows, a dataset with
        no labels or no images (one line each).
    """
    if config.labels:
        return labelled_data(
            config.dataset, config.labels, config.seed, labels_config(config), config.data_dir
        )
    return completion_data(
        config.dataset, config.quadrants, conditions_config(config), config.data_dir
    )


def m2(data: Dataset, config) -> dict:
    """M2, trained semi-supervised with its auxiliary classifier: accuracy of q(y | x)."""
    model, guide, seconds = train_m2(data, labels_config(config))
    x, y = data.test
    log_px, stderr = log_px_summed(model, guide, x, y.shape[1], config.eval_samples)
    return {
        "accuracy": accuracy(guide.classify, x, data.test_labels), "log_px": log_px,
        "log_px_stderr": stderr, "estimator": f"IS K={config.eval_samples} per class",
        "fit_seconds": seconds,
    }  # fmt: skip


def labels_only(data: Dataset, config) -> dict:
    """The same q(y | x) network trained by cross-entropy on the labelled rows alone."""
    net, seconds = timed(lambda: train_classifier(data, labels_config(config)))
    x, _ = data.test
    score = accuracy(lambda v: net(v).argmax(1), x, data.test_labels)
    return {"accuracy": score, "log_px": math.nan, "log_px_stderr": math.nan,
            "estimator": None, "fit_seconds": seconds}  # fmt: skip


#: The rows of ``ppvae compare --labels N`` by name.
LABEL_METHODS: dict[str, Callable[[Dataset, object], dict]] = {
    "m2": m2,
    "labels-only": labels_only,
}


class Completion:
    """The plain network and the CVAE trained once on ``data`` (on first use) and scored
    (:func:`~ppvae.experiments.conditions.score_cvae`), shared by the ``--quadrants`` rows.

    Examples
    --------
    >>> from ppvae.experiments.compare import CompareConfig
    >>> from ppvae.experiments.compare_labels import Completion, table_data
    >>> config = CompareConfig(quadrants=2, train_size=100, test_size=10, epochs=1,
    ...                        z_dim=2, hidden=(8,), eval_samples=2, elbo_samples=1)
    >>> done = Completion(table_data(config), config)
    >>> done.scores is done.scores  # trained once
    True
    """

    def __init__(self, data: Dataset, config):
        self.data, self.config = data, conditions_config(config)

    @functools.cached_property
    def scores(self) -> dict:
        """score_cvae's numbers and ``fit_seconds``, the seconds of the one training."""
        model, guide, baseline, seconds = train_cvae(self.data, self.config)
        scores = score_cvae(model, guide, baseline, self.data.test, self.config)
        return {**scores, "fit_seconds": seconds}


def cvae(done: Completion, config) -> dict:
    """The CVAE's importance-sampled conditional log-likelihood of the hidden pixels."""
    s = done.scores
    estimator = f"IS K={config.eval_samples}"
    return {"log_py_x": s["cvae_log_lik"], "log_py_x_stderr": s["cvae_log_lik_se"],
            "estimator": estimator, "fit_seconds": s["fit_seconds"]}  # fmt: skip


def cvae_elbo(done: Completion, config) -> dict:
    """The CVAE's ELBO, a lower bound on log p(y | x); Pyro's cvae example prints it negated."""
    s = done.scores
    return {"log_py_x": -s["cvae_neg_elbo"], "log_py_x_stderr": math.nan,
            "estimator": f"ELBO, {config.elbo_samples} samples",
            "fit_seconds": s["fit_seconds"]}  # fmt: skip


def baseline(done: Completion, config) -> dict:
    """The plain network's exact Bernoulli log-likelihood of the hidden pixels."""
    s = done.scores
    return {"log_py_x": s["baseline_log_lik"], "log_py_x_stderr": 0.0, "estimator": "exact",
            "fit_seconds": s["fit_seconds"]}  # fmt: skip


#: The rows of ``ppvae compare --quadrants K`` by name.
QUADRANT_METHODS: dict[str, Callable[[Completion, object], dict]] = {
    "cvae": cvae,
    "cvae-elbo": cvae_elbo,
    "baseline": baseline,
}


def compare_labels(config, data=None, bar=iter, *, done=None, on_row=None) -> pd.DataFrame:
    """The ``--labels`` or ``--quadrants`` table (whichever ``config`` sets): the rows of
    :data:`LABEL_METHODS` or :data:`QUADRANT_METHODS` named by ``config.methods`` (all by
    default) on ``data`` (:func:`table_data`'s, made here if None). ``bar``, ``done`` and
    ``on_row``, and what a failed or interrupted row does, are as in
    :func:`ppvae.experiments.compare.compare` (the same
    :func:`~ppvae.experiments.rows.fit_table`)."""
    data = table_data(config) if data is None else data
    methods, columns = (
        (LABEL_METHODS, LABEL_COLUMNS) if config.labels else (QUADRANT_METHODS, QUADRANT_COLUMNS)
    )
    chosen = {k: m for k, m in methods.items() if not config.methods or k in config.methods}
    shared = data if config.labels else Completion(data, config)

    def score(name: str, method: Callable) -> dict:
        return {**score_row(name, method, shared, config), "status": OK}

    return fit_table(chosen, score, columns, bar, done=done, on_row=on_row)


def caption(config, data: Dataset) -> str:
    """One line stating the data and the settings behind a ``--labels`` or ``--quadrants``
    table."""
    rows = f"train/test {len(data.train[0])}/{len(data.test[0])} rows"
    nets = (
        f"z_dim={config.z_dim}, hidden={list(config.hidden)}, epochs={config.epochs} (batch "
        f"{config.batch_size}, lr {config.lr}), IS K={config.eval_samples}, seed {config.seed}"
    )
    if config.labels:
        aux = labels_config(config).aux_weight
        return (
            f"{config.dataset}, {config.labels} class-balanced labels (draw {config.seed}), "
            f"pixels in [0, 1], {rows}; M2 with y enumerated and the auxiliary classifier "
            f"(weight {aux}), {nets}. log p(x) in nats per test example."
        )
    return (
        f"{config.dataset}, quadrant completion from {config.quadrants} given quadrant(s), "
        f"{rows}; the plain network, then the CVAE on it, {nets}, "
        f"{config.elbo_samples} ELBO samples. log p(y | x) of the hidden pixels in nats per "
        "test example, higher is better; Pyro's example prints -ELBO (the cvae-elbo row "
        'negated) as its "negative CLL": an upper bound on -log p(y | x), not the IS figure.'
    )
