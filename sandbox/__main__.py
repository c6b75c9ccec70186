"""`python -m sandbox ...`, the same as `callstream sandbox ...`."""

import sys

from sandbox.cli import main

raise SystemExit(main(sys.argv[1:]))
