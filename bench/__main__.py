"""`python -m bench [--suite NAME] [--overwrite] [--threshold F] [-k EXPR]` (what `make bench` runs)."""

import sys

from bench.harness import main

if __name__ == "__main__":
    sys.exit(main())
