"""``python -m jaxgmm``: the same command line as the ``jaxgmm`` console script."""

import sys

from jaxgmm.cli import main

if __name__ == "__main__":
    sys.exit(main())
