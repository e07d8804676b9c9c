"""``python -m kvraft.testing.chaos``: see ``kvraft.testing.chaos.cli``."""

import sys

from kvraft.testing.chaos.cli import main

sys.exit(main())
