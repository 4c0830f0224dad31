"""`python -m mlkd` is the `mlkd` command."""
import sys

from mlkd.cli import main

sys.exit(main())
