import os

import pytest
import torch

from helpers import NWPU_ROOT

# Tests run on 2 shared cores: keep torch from oversubscribing them; under pytest-xdist (one worker per core,
# pyproject's addopts) each worker is one of the cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Commands under test may set torch's thread count process-wide (``threads=1``): put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_deprecation_warnings(monkeypatch):
    """A renamed key's warning prints once per process (hmpe.utils.renames): each test starts with none printed."""
    from hmpe.utils import renames

    monkeypatch.setattr(renames, "_warned", set())


@pytest.fixture
def nwpu_root():
    if not (NWPU_ROOT / "ground truth").is_dir():
        pytest.skip(f"NWPU VHR-10 not present at {NWPU_ROOT}")
    return NWPU_ROOT
