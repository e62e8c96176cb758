"""``python -m ppvae`` (and ``torchrun -m ppvae``): the ``ppvae`` command."""

import sys

from ppvae.cli import main

if __name__ == "__main__":
    sys.exit(main())
