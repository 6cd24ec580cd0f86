"""``python -m benchmarks.peers``: see :mod:`benchmarks.peers`."""

from benchmarks._common import default_datasets_env
from benchmarks.peers.cli import main

default_datasets_env()
main()
