"""``python -m hmpe`` (and ``torchrun ... -m hmpe train``) runs the command line."""

import sys

from hmpe.cli import main

sys.exit(main())
