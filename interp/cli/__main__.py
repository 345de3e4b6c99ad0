"""`python -m interp.cli` runs the `interp` command (torchrun launches it this way)."""
import sys

from interp.cli import main

sys.exit(main())
