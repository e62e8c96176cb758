"""Execute the notebooks in their smoke mode for the site, into ``docs/_generated/notebooks/``
(git ignores it: outputs are never committed). A notebook whose source has not changed since
its last execution is reused; ``PPVAE_DOCS_NOTEBOOKS=off`` renders them without outputs."""

import hashlib
import os
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
WIDGET = "application/vnd.jupyter.widget-view+json"


def strip_widgets(nb) -> None:
    """Drop progress-bar widgets: they need ipywidgets' JavaScript from the network."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if WIDGET not in o.get("data", {})]


def execute(source: Path, target: Path) -> float:
    """Run ``source`` in a kernel (smoke mode, a scratch working directory) into ``target``;
    return the seconds it took."""
    import nbclient

    nb = nbformat.read(source, as_version=4)
    start = time.perf_counter()
    env = {"PPVAE_SMOKE": "1", "OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment
    try:
        with tempfile.TemporaryDirectory() as cwd:
            client = nbclient.NotebookClient(
                nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": cwd}}
            )
            client.execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    strip_widgets(nb)
    nbformat.write(nb, target)
    return time.perf_counter() - start


def build(out: Path) -> list[str]:
    """Every notebook in ``notebooks/``, executed (or reused) into ``out``; the page names."""
    out.mkdir(parents=True, exist_ok=True)
    run = os.environ.get("PPVAE_DOCS_NOTEBOOKS", "on") != "off"
    names = []
    for source in sorted((ROOT / "notebooks").glob("*.ipynb")):
        target, stamp = out / source.name, out / (source.name + ".sha256")
        digest = hashlib.sha256(source.read_bytes() + run.to_bytes()).hexdigest()
        if not (target.exists() and stamp.exists() and stamp.read_text() == digest):
            if run:
                seconds = execute(source, target)
                print(f"docs: executed {source.name} in smoke mode in {seconds:.0f} s")
            else:
                target.write_bytes(source.read_bytes())
            stamp.write_text(digest)
        names.append(source.stem)
    return names
