"""``python -m pagellm``: the ``pagellm`` command (``python -m pagellm serve MODEL ...``)."""

import sys

from pagellm.entrypoints.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
