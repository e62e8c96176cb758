"""Execute the notebooks in their smoke mode for the site, into ``docs/_generated/notebooks/``
(git ignores it: outputs are never committed). A notebook whose source has not changed since
its last execution is reused; ``PPVAE_DOCS_NOTEBOOKS=off`` renders them without outputs."""

import contextlib
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


@contextlib.contextmanager
def _smoke_env():
    """Smoke mode and one thread per kernel, in the environment the kernels inherit."""
    env = {"PPVAE_SMOKE": "1", "OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def execute(source: Path, target: Path) -> float:
    """Run ``source`` in a kernel (in a scratch working directory) into ``target``; return the
    seconds it took."""
    import nbclient

    nb = nbformat.read(source, as_version=4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cwd:
        client = nbclient.NotebookClient(
            nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": cwd}}
        )
        client.execute()
    strip_widgets(nb)
    nbformat.write(nb, target)
    return time.perf_counter() - start


def build(out: Path) -> list[str]:
    """Every notebook in ``notebooks/``, executed (or reused) into ``out``, two at a time (one
    thread each: the machine of CI has two cores); the page names."""
    from concurrent.futures import ThreadPoolExecutor

    out.mkdir(parents=True, exist_ok=True)
    run = os.environ.get("PPVAE_DOCS_NOTEBOOKS", "on") != "off"
    sources = sorted((ROOT / "notebooks").glob("*.ipynb"))
    todo = []
    for source in sources:
        target, stamp = out / source.name, out / (source.name + ".sha256")
        digest = hashlib.sha256(source.read_bytes() + run.to_bytes()).hexdigest()
        if not (target.exists() and stamp.exists() and stamp.read_text() == digest):
            stamp.unlink(missing_ok=True)
            todo.append((source, target, stamp, digest))
    if run and todo:
        with _smoke_env(), ThreadPoolExecutor(max_workers=2) as pool:
            seconds = list(pool.map(lambda job: execute(job[0], job[1]), todo))
        for (source, *_), s in zip(todo, seconds, strict=True):
            print(f"docs: executed {source.name} in smoke mode in {s:.0f} s")
    for source, target, stamp, digest in todo:
        if not run:
            target.write_bytes(source.read_bytes())
        stamp.write_text(digest)
    return [source.stem for source in sources]
