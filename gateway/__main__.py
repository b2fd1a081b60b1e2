"""``python -m gateway`` runs the ``turnout`` command line."""

import sys

from gateway.cli import main

sys.exit(main())
