"""``python -m mmm4rec <command> …``: the same as the ``mmm4rec`` console script."""
import sys

from .commands import main

sys.exit(main())
