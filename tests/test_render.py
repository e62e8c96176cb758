"""ppvae.render draws a model and its guide as Pyro draws plates, with each network as one node
and the arrow from x into an amortized guide; the DOT text is checked edge by edge."""

import re
from pathlib import Path

import matplotlib.image
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import ppvae
from ppvae import ArchConfig, DataShape
from ppvae.errors import DiagramError, DiagramWarning
from ppvae.experiments import run_diagram
from ppvae.guides import GUIDES
from ppvae.models import MODELS
from ppvae.pairs.diagram import INSTALL_DOT

EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)"', re.MULTILINE)
NODE = re.compile(r'^\s*"([^"]+)" \[(.*)\]$', re.MULTILINE)


def edges(graph) -> set[tuple[str, str]]:
    return set(EDGE.findall(graph.source))


def nodes(graph) -> dict[str, str]:
    """DOT name -> its attributes, as written."""
    return dict(NODE.findall(graph.source))


def in_cluster(graph, cluster: str) -> set[str]:
    """The nodes declared directly in ``subgraph cluster`` (a plate holds no other plate here)."""
    body = re.search(rf"subgraph {cluster} {{(.*?)}}", graph.source, re.DOTALL).group(1)
    return set(dict(NODE.findall(body)))


def catalogue_pair(model="bernoulli", guide="diag", num_data=20):
    shape = DataShape(6, None, num_data)
    arch = ArchConfig(z_dim=2, hidden=(8,))
    built = MODELS[model](arch, shape)
    return built, GUIDES[guide](arch, shape, built)


VAE_EDGES = {
    ("model/z", "model/net/decoder"),
    ("model/net/decoder", "model/x"),
    ("guide/data/x", "guide/net/net"),
    ("guide/net/net", "guide/z"),
}
"""z -> decoder -> x in the model; x -> encoder (the guide's ``net``) -> z in the guide."""


def test_catalogue_vae_has_its_networks_its_plate_and_the_arrow_from_x():
    model, guide = catalogue_pair()
    x = torch.rand(4, 6)
    graph = ppvae.render(model, guide, x)
    assert edges(graph) == VAE_EDGES
    assert in_cluster(graph, "cluster_model_data") == {"model/z", "model/x"}
    assert in_cluster(graph, "cluster_guide_data") == {"guide/data/x", "guide/z"}
    drawn = nodes(graph)
    assert (
        "BernoulliDecoder" in drawn["model/net/decoder"]
        and "shape=box" in drawn["model/net/decoder"]
    )
    assert "MLP" in drawn["guide/net/net"]
    assert "fillcolor=gray" in drawn["model/x"] and "fillcolor=gray" in drawn["guide/data/x"]
    assert "fillcolor=white" in drawn["model/z"] and "fillcolor=white" in drawn["guide/z"]
    assert r"z ~ Normal\lx ~ Bernoulli\l" in drawn["model/distributions"]
    # ppvae's calling convention (x, idx) draws the same: the row numbers feed no site
    assert edges(ppvae.render(model, guide, x, torch.arange(4))) == VAE_EDGES


def test_render_leaves_the_param_store_and_the_random_streams_alone():
    model, guide = catalogue_pair()
    x = torch.rand(4, 6)
    state = torch.get_rng_state()
    ppvae.render(model, guide, x)
    assert list(pyro.get_param_store().keys()) == []
    assert torch.equal(torch.get_rng_state(), state)


def test_a_per_datapoint_guide_has_no_arrow_from_x_but_its_own_parameters():
    model, guide = catalogue_pair(guide="local", num_data=4)
    graph = ppvae.render(model, guide, torch.rand(4, 6), torch.arange(4))
    guide_edges = {e for e in edges(graph) if e[0].startswith("guide/")}
    assert guide_edges == {("guide/data/idx", "guide/z"), ("guide/guide.local", "guide/z")}


class TutorialVAE(nn.Module):
    """Pyro's VAE tutorial's layout: networks as attributes, ``pyro.module`` in model/guide."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
        self.decoder = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 6), nn.Sigmoid())

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("batch", x.shape[0]):
            prior = dist.Normal(x.new_zeros(x.shape[0], 2), x.new_ones(x.shape[0], 2))
            z = pyro.sample("latent", prior.to_event(1))
            pyro.sample("obs", dist.Bernoulli(self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("batch", x.shape[0]):
            loc, log_scale = self.encoder(x).split(2, -1)
            pyro.sample("latent", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_a_tutorial_pair_with_its_own_names():
    vae = TutorialVAE()
    graph = ppvae.render(vae.model, vae.guide, torch.rand(3, 6).round())
    assert edges(graph) == {
        ("model/latent", "model/net/decoder"),
        ("model/net/decoder", "model/obs"),
        ("guide/data/x", "guide/net/encoder"),
        ("guide/net/encoder", "guide/latent"),
    }  # x.new_zeros(...) in the prior is no arrow from x
    assert in_cluster(graph, "cluster_guide_batch") == {"guide/data/x", "guide/latent"}


def test_networks_of_plain_functions_are_named_as_pyro_module_registers_them():
    net = nn.Linear(2, 3)

    def model(data):
        pyro.module("generator", net)
        with pyro.plate("N", len(data)):
            h = pyro.sample("h", dist.Normal(0.0, 1.0).expand([len(data), 2]).to_event(1))
            pyro.sample("y", dist.Normal(net(h), 1.0).to_event(1), obs=data)

    graph = ppvae.render(model, None, torch.zeros(5, 3))
    assert edges(graph) == {("model/h", "model/net/generator"), ("model/net/generator", "model/y")}
    assert "Linear" in nodes(graph)["model/net/generator"]


def test_data_given_as_several_arguments_or_as_keywords():
    """A conditional pair p(z) p(y | x, z), q(z | x, y): x is an input of both, y observed."""
    head, encoder = nn.Linear(3, 1), nn.Linear(2, 2)

    def model(x, y):
        pyro.module("head", head)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([len(x), 2]).to_event(1))
            loc = head(torch.cat([x[:, None], z], -1)).squeeze(-1)
            pyro.sample("y", dist.Normal(loc, 1.0), obs=y)

    def guide(x, y):
        pyro.module("encoder", encoder)
        with pyro.plate("data", len(x)):
            loc, rho = encoder(torch.stack([x, y], -1)).split(1, -1)
            pyro.sample("z", dist.Normal(loc.expand(-1, 2), rho.exp()).to_event(1))

    expected = {
        ("model/data/x", "model/net/head"),
        ("model/z", "model/net/head"),
        ("model/net/head", "model/y"),
        ("guide/data/x", "guide/net/encoder"),
        ("guide/data/y", "guide/net/encoder"),
        ("guide/net/encoder", "guide/z"),
    }
    x, y = torch.randn(5), torch.randn(5)
    assert edges(ppvae.render(model, guide, x, y)) == expected
    assert edges(ppvae.render(model, guide, x=x, y=y)) == expected


def test_a_pyro_param_model_draws_its_parameters():
    def model(data):
        loc = pyro.param("loc", torch.zeros(3))
        scale = pyro.param("scale", torch.ones(3), constraint=dist.constraints.positive)
        W = pyro.param("W", torch.zeros(2, 3))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([len(data), 2]).to_event(1))
            pyro.sample("x", dist.Normal(loc + z @ W, scale).to_event(1), obs=data)

    def guide(data):
        z_loc = pyro.param("z_loc", torch.zeros(len(data), 2))
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Normal(z_loc, 1.0).to_event(1))

    graph = ppvae.render(model, guide, torch.zeros(5, 3))
    assert edges(graph) == {
        ("model/z", "model/x"),
        ("model/loc", "model/x"),
        ("model/scale", "model/x"),
        ("model/W", "model/x"),
        ("guide/z_loc", "guide/z"),
    }
    drawn = nodes(graph)
    assert all("shape=plain" in drawn[f"model/{p}"] for p in ("loc", "scale", "W"))
    assert r"scale : GreaterThan(lower_bound=0.0)\l" in drawn["model/distributions"]
    assert "model/loc" not in in_cluster(graph, "cluster_model_data")  # global: outside


def test_png_and_svg_files_that_open(tmp_path):
    model, guide = catalogue_pair()
    graph = ppvae.render(model, guide, torch.rand(4, 6), filename=tmp_path / "pair", format="png")
    png = (tmp_path / "pair.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    pixels = matplotlib.image.imread(tmp_path / "pair.png")
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100 and pixels.std() > 0.05
    ppvae.render(model, guide, torch.rand(4, 6), filename=tmp_path / "pair.svg")
    svg = (tmp_path / "pair.svg").read_text()
    assert "<svg" in svg and "decoder" in svg and "BernoulliDecoder" in svg
    assert graph._repr_mimebundle_()["image/svg+xml"].count("<svg") == 1  # Jupyter's view


def test_without_dot_one_line_says_how_to_install_it(tmp_path, monkeypatch):
    model, guide = catalogue_pair()
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot there
    with pytest.raises(DiagramError) as err:
        ppvae.render(model, guide, torch.rand(4, 6))
    assert str(err.value) == INSTALL_DOT and "\n" not in str(err.value)
    assert "apt-get install graphviz" in INSTALL_DOT and "brew install graphviz" in INSTALL_DOT
    # ppvae train: a warning line, nothing written, and the run goes on
    with pytest.warns(DiagramWarning, match="model.svg not drawn: drawing needs Graphviz"):
        run_diagram.diagram(model, guide, torch.rand(4, 6), tmp_path / "model.svg")
    assert not (tmp_path / "model.svg").exists()


def svg_arrows(path) -> set[tuple[str, str]]:
    """The arrows of an SVG Graphviz wrote, as (tail, head) DOT names (from its titles).
    ``ppvae train``'s ``model.svg`` is checked with it in tests/test_cli.py, whose run has one."""
    titles = re.findall(r"<title>(.*?)</title>", Path(path).read_text())
    return {tuple(t.split("&#45;&gt;")) for t in titles if "&#45;&gt;" in t}


def test_svg_arrows_are_the_dot_edges(tmp_path):
    model, guide = catalogue_pair()
    ppvae.render(model, guide, torch.rand(4, 6), filename=tmp_path / "pair.svg")
    assert svg_arrows(tmp_path / "pair.svg") == VAE_EDGES
