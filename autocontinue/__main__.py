"""``python -m autocontinue``: the same command as the ``autocontinue`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
