"""Pictures show in a notebook: executed in a Jupyter kernel (smoke mode), every plot cell
carries a PNG image, the diagram of the pair an SVG, none shows only ``<Figure size ...>``
text, and no progress bar warns that IProgress (ipywidgets) is missing."""

import base64
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PNG = b"\x89PNG\r\n\x1a\n"
SVG = "image/svg+xml"


def plot_cell(source: str) -> bool:
    """A cell that draws: it calls one of ppvae's plots or shows a pyplot figure."""
    return "plots." in source or "plt.show()" in source


def execute(name: str) -> list:
    """The code cells of notebook ``name`` after a run in a kernel, in smoke mode."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PPVAE_SMOKE", "1")  # the kernel inherits the environment
        patch.setenv("OMP_NUM_THREADS", "1")
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}
        )
        client.execute()
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def pngs(cell) -> list[bytes]:
    return [
        base64.b64decode(o.data["image/png"])
        for o in cell.outputs
        if "image/png" in o.get("data", {})
    ]


@pytest.fixture(scope="module")
def executed():
    return execute("06_generating.ipynb")


def test_every_plot_cell_shows_a_png(executed):
    plotting = [cell for cell in executed if plot_cell(cell.source)]
    assert len(plotting) == 6  # ELBO, samples, interpolation, grid, scatter, active units
    for cell in plotting:
        images = [o.data["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(images) == 1, cell.source
        assert base64.b64decode(images[0]).startswith(PNG), cell.source


def test_the_diagram_shows_as_an_svg(executed):
    """ppvae.render's graph shows inline as SVG, with the pair's networks in it."""
    (drawing,) = [cell for cell in executed if "render(" in cell.source]
    svgs = [o.data[SVG] for o in drawing.outputs if SVG in o.get("data", {})]
    assert len(svgs) == 1 and "<svg" in svgs[0]
    assert "model/net/decoder" in svgs[0] and "guide/net/net" in svgs[0]


def test_no_figure_shows_as_text_alone(executed):
    for cell in executed:
        for output in cell.outputs:
            data = output.get("data", {})
            if data.get("text/plain", "").startswith("<Figure size"):
                assert "image/png" in data, cell.source


def test_no_progress_bar_warns_about_ipywidgets(executed):
    streams = "".join(
        output.text for cell in executed for output in cell.outputs if output.get("name")
    )
    assert "IProgress" not in streams and "TqdmWarning" not in streams


def test_the_training_bar_is_a_jupyter_widget(executed):
    (training,) = [cell for cell in executed if "progress=True" in cell.source]
    kinds = [key for output in training.outputs for key in output.get("data", {})]
    assert "application/vnd.jupyter.widget-view+json" in kinds  # tqdm.auto's notebook bar


def test_notebook_01_shows_every_figure_it_draws():
    """Notebook 01 draws with ppvae's plots and with pyplot, one figure a cell, and in the
    posterior-collapse cell three (a pyplot scatter, then two reconstruction grids in a loop,
    shown by ``display``)."""
    cells = [cell for cell in execute("01_vae_from_the_elbo.ipynb") if plot_cell(cell.source)]
    assert cells
    for cell in cells:
        expected = 3 if "collapse.items()" in cell.source else 1
        images = pngs(cell)
        assert len(images) == expected, cell.source
        assert all(image.startswith(PNG) for image in images), cell.source


def test_notebook_07_shows_its_completed_quadrants():
    """Notebook 07 draws one figure, the CVAE's completions from ``Predictive``, with pyplot."""
    cells = [c for c in execute("07_labels_and_conditions.ipynb") if plot_cell(c.source)]
    assert len(cells) == 1 and "Predictive(" in cells[0].source
    images = pngs(cells[0])
    assert len(images) == 1 and images[0].startswith(PNG)
