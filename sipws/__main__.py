"""``python -m sipws``: the same as the ``sipws`` command (see sipws.cli).

Useful where console scripts are not on PATH (a venv not activated, a
container image with only ``python``).
"""

import sys

from sipws.cli import main

if __name__ == "__main__":
    sys.exit(main())
