"""`python -m sftdata.cli COMMAND ...`: the `sftdata` console script."""

import sys

from sftdata.cli import main

sys.exit(main())
