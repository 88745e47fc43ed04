"""``python -m pgproxy``: same as the ``pgproxy`` command."""

import sys

from pgproxy.cli import main

sys.exit(main())
