"""A model and its guide drawn as Pyro draws a model (:func:`pyro.render_model`: sites, their
distributions, plates and parameters), with what that leaves out: each network as one node
(``z -> decoder -> x``, ``x -> encoder -> z``) and the data a guide reads (the arrow from ``x``
that makes it amortized). The relations come from :mod:`ppvae.pairs.relations`, their layout
(plates and nesting) from Pyro's :func:`~pyro.infer.inspect.generate_graph_specification`.
"""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from pyro.infer.inspect import generate_graph_specification

from ppvae.config import atomic_write_text
from ppvae.errors import DiagramError, OutputError, first_line
from ppvae.pairs.relations import get_relations
from ppvae.pairs.tracking import DATA_PREFIX, NETWORK_PREFIX

INSTALL_DOT = (
    "drawing needs Graphviz's dot program, which is not on PATH: install it with "
    "`apt-get install graphviz` (Debian, Ubuntu), `brew install graphviz` (macOS) or "
    "`conda install -c conda-forge graphviz`"
)
"""The one line :class:`~ppvae.errors.DiagramError` says when ``dot`` is missing."""

NETWORK_COLOR = "#d7e6f5"
"""The fill of a network's box."""


def graphviz_module():
    """The ``graphviz`` package, once ``dot`` is known to be there to draw with."""
    try:
        import graphviz
    except ImportError:
        raise DiagramError("drawing needs the graphviz package: pip install graphviz") from None
    if shutil.which("dot") is None:
        raise DiagramError(INSTALL_DOT)
    return graphviz


def render(
    model: Callable,
    guide: Callable | None,
    *args,
    filename: str | os.PathLike | None = None,
    format: str | None = None,
    **kwargs,
):
    """Draw ``model`` and ``guide`` side by side, each traced once on ``(*args, **kwargs)``.

    Each is drawn as :func:`pyro.render_model` draws a model with its distributions and
    parameters: latent sites white, observed sites grey, plates as boxes, ``pyro.param``
    values as plain names, and a legend of distributions and constraints. Added:

    - each network (a module with parameters that samples nothing, found by torch's module
      hooks however it is registered) as one box, named by its attribute (``decoder``) or the
      name it was registered under (``pyro.module("encoder", net)``), with its class;
    - each data argument a site depends on (the ``x`` an amortized guide encodes) as a grey
      node, in the plates of the sites it reaches.

    Nothing is trained, and neither the param store nor torch's random streams change.

    Parameters
    ----------
    model, guide : callable
        The pair, as passed to ``fit`` (any names, ``PyroModule`` or function). ``guide`` may
        be None to draw the model alone.
    *args, **kwargs
        What both are called with: a batch ``x`` of a few rows is enough.
    filename : str or PathLike, optional
        Also write the drawing there (atomically): ``"model.png"``, or ``"model"`` with
        ``format="png"`` (written to ``model.png``).
    format : str, optional
        ``"svg"`` (the default), ``"png"``, ``"pdf"``, ... (Graphviz's formats).

    Returns
    -------
    graphviz.Digraph
        Shown inline by Jupyter; ``.source`` is its DOT text, ``.render(...)`` writes files.

    Raises
    ------
    DiagramError
        When Graphviz's ``dot`` program is not installed (the message says how to install it)
        or ``format`` is not one of Graphviz's.

    Examples
    --------
    >>> import pyro, torch, pyro.distributions as dist
    >>> from torch import nn
    >>> decoder = nn.Linear(2, 3)
    >>> def model(x):
    ...     pyro.module("decoder", decoder)
    ...     with pyro.plate("data", len(x)):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([len(x), 2]).to_event(1))
    ...         pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)
    >>> graph = render(model, None, torch.zeros(4, 3))
    >>> sorted(line.strip() for line in graph.body if "->" in line)
    ['"model/net/decoder" -> "model/x"', '"model/z" -> "model/net/decoder"']
    """
    graphviz = graphviz_module()
    graph = graphviz.Digraph(name="pair")
    edges = []
    for role, fn in (("model", model), ("guide", guide)):
        if fn is not None:
            relations = get_relations(fn, args, kwargs)
            spec = generate_graph_specification(relations, render_params=True)
            graph.subgraph(_cluster(graphviz, role, relations, spec))
            edges += [(node_id(role, s), node_id(role, t)) for s, t in spec["edge_list"]]
    for source, target in edges:
        graph.edge(source, target)
    if filename is not None:
        write(graph, filename, format)
    return graph


def _cluster(graphviz, role: str, relations: dict, spec: dict):
    """One of the pair, in a box labelled ``role``: its plates (nested as Pyro nests them),
    nodes and legend."""
    cluster = graphviz.Digraph(name=f"cluster_{role}")
    cluster.attr(label=role, labeljust="l", labelloc="t", style="dashed", color="gray60")
    plates = {None: cluster}
    for plate in spec["plate_groups"]:
        if plate is not None:
            plates[plate] = graphviz.Digraph(name=f"cluster_{role}_{plate}")
            plates[plate].attr(
                label=plate, labeljust="r", labelloc="b", style="solid", color="black"
            )
    for plate, nodes in spec["plate_groups"].items():
        for node in nodes:
            plates[plate].node(node_id(role, node), **_style(node, relations))
    nesting = dict(spec["plate_data"])
    while nesting:  # innermost plates first, as Pyro adds them
        leaf = next(p for p in nesting if all(d["parent"] != p for d in nesting.values()))
        plates[nesting.pop(leaf)["parent"]].subgraph(plates[leaf])
    legend = _legend(relations)
    if legend:
        cluster.node(f"{role}/distributions", label=legend, shape="plaintext")
    return cluster


def node_id(role: str, node: str) -> str:
    """The DOT name of ``node`` of the model or the guide: ``model/z``, ``guide/net/encoder``,
    ``guide/data/x`` (no colon, which DOT reads as a port)."""
    return f"{role}/{node}".replace(":", "/")


def _style(node: str, relations: dict) -> dict[str, str]:
    """Graphviz attributes of ``node``: a site (grey when observed), a data argument (grey), a
    network (a box naming its class) or a parameter (its plain name)."""
    if node.startswith(NETWORK_PREFIX):
        name, kind = node[len(NETWORK_PREFIX) :], relations["networks"][node]
        label = f'<{_html(name)}<BR/><FONT POINT-SIZE="10">{_html(kind)}</FONT>>'
        return dict(label=label, shape="box", style="rounded,filled", fillcolor=NETWORK_COLOR)
    if node.startswith(DATA_PREFIX):
        return dict(
            label=node[len(DATA_PREFIX) :], shape="ellipse", style="filled", fillcolor="gray"
        )
    if node in relations["sample_dist"]:
        color = "gray" if node in relations["observed"] else "white"
        return dict(label=node, shape="ellipse", style="filled", fillcolor=color)
    return dict(label=node, shape="plain")


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _legend(relations: dict) -> str:
    """Pyro's legend: ``z ~ Normal`` for each site, ``W : Real()`` for each parameter."""
    lines = [
        rf"{site} ~ {name}\l"
        for site, name in relations["sample_dist"].items()
        if name is not None
    ]
    lines += [rf"{p} : {c}\l" for p, c in relations["param_constraint"].items()]
    return "".join(lines)


def write(graph, filename: str | os.PathLike, format: str | None = None) -> Path:
    """Write ``graph`` drawn as ``format`` (else the file's suffix, else SVG) to ``filename``,
    atomically; returns the path written (``filename`` with the format's suffix added when it
    has another)."""
    graphviz = graphviz_module()
    path = Path(filename)
    suffix = path.suffix[1:].lower()
    fmt = (format or (suffix if suffix in graphviz.FORMATS else "svg")).lower()
    if fmt not in graphviz.FORMATS:
        raise DiagramError(f"unknown diagram format {fmt!r}; choose svg, png or pdf")
    if suffix != fmt:
        path = path.with_name(f"{path.name}.{fmt}")
    try:
        data = graph.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise DiagramError(INSTALL_DOT) from None
    try:
        atomic_write_text(path, data)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {first_line(err)}") from err
    return path
