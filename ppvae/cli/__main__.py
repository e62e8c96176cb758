"""``python -m ppvae.cli``: the ``ppvae`` command."""

import sys

from ppvae.cli import main

if __name__ == "__main__":
    sys.exit(main())
