import os
from pathlib import Path

import pytest
import torch

# Tests run on 2 shared cores: keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
NWPU_ROOT = REPO.parent / "shared" / "datasets" / "nwpu-vhr10"


@pytest.fixture
def nwpu_root() -> Path:
    if not (NWPU_ROOT / "ground truth").is_dir():
        pytest.skip(f"NWPU VHR-10 not present at {NWPU_ROOT}")
    return NWPU_ROOT
