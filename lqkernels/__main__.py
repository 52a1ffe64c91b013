"""`python -m lqkernels`: the lqkernels command line (lqkernels.cli)."""
import sys

from lqkernels.cli import main

sys.exit(main())
