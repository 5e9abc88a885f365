"""``python -m execgate``: the same command as the ``execgate`` console script."""

import sys

from execgate._entry import main

sys.exit(main())
