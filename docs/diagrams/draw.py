"""Draw the catalogue's Bernoulli VAE with its diagonal Gaussian guide (README, issue 20):
writes docs/diagrams/bernoulli_diag.png and .svg. Run from the repository root:

    .venv/bin/python docs/diagrams/draw.py
"""

from pathlib import Path

import ppvae
from ppvae import ArchConfig, DataShape, load_dataset
from ppvae.guides import GUIDES
from ppvae.models import MODELS

HERE = Path(__file__).resolve().parent


def main() -> None:
    ppvae.seed(0)
    data = load_dataset("digits")
    shape = DataShape(data.train.shape[1], data.image_shape, data.train.shape[0])
    model = MODELS["bernoulli"](ArchConfig(z_dim=2), shape)
    guide = GUIDES["diag"](ArchConfig(z_dim=2), shape, model)
    for suffix in ("png", "svg"):
        path = HERE / f"bernoulli_diag.{suffix}"
        graph = ppvae.render(model, guide, data.train[:8], filename=path)
        print(f"wrote {path}")
    print("\n".join(line.strip() for line in graph.body if "->" in line))


if __name__ == "__main__":
    main()
