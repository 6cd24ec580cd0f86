"""``python -m benchmarks.front``: see :mod:`benchmarks.front`."""

from benchmarks._common import default_datasets_env
from benchmarks.front.cli import main

default_datasets_env()
main()
