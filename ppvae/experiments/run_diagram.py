"""The diagram of a run's model and guide (``model.svg``), drawn on a few training rows."""

import warnings
from pathlib import Path

import torch

from ppvae.data import Rows, as_rows
from ppvae.errors import DiagramWarning, first_line
from ppvae.pairs.calling import accepts_indices
from ppvae.pairs.diagram import render, write


def diagram(model, guide, train, path: Path) -> None:
    """Draw the pair on a few training rows into ``path`` (for data of several tensors, rows
    with every argument observed where there are such); when it cannot be drawn (no
    Graphviz), one warning line, and the run goes on."""
    try:
        args, kwargs = few_rows(model, guide, train)
        write(render(model, guide, *args, **kwargs), path)
    except Exception as err:  # a drawing is never worth a run
        warnings.warn(f"{path.name} not drawn: {first_line(err)}", DiagramWarning, stacklevel=2)


def few_rows(model, guide, train, rows: int = 8) -> tuple[tuple, dict]:
    """The arguments for drawing the pair: ``rows`` rows of ``train`` (and their indices,
    for pairs that take them)."""
    data = as_rows(train)
    if isinstance(data, Rows):
        group = data.groups()[0]  # every argument observed, where some rows have them all
        few = data[group.rows[:rows]].present(group.present)
        return few.args, few.kwargs
    x = data[:rows]
    both = accepts_indices(model) and accepts_indices(guide)
    return ((x, torch.arange(len(x))) if both else (x,)), {}
