"""``python -m textfleet.cli``: the ``textfleet`` command without its entry point."""

import sys

from textfleet.cli import main

sys.exit(main())
