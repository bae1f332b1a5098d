"""`python -m camcore ...`: see camcore/cli.py."""

import sys

from camcore.cli import main

if __name__ == "__main__":
    sys.exit(main())
