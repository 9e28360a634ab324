"""`python -m harvest ...` is the `harvest` command."""

import sys

from harvest.cluster.cli import main

if __name__ == "__main__":
    sys.exit(main())
