import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
sys.path.insert(0, str(TESTS))  # so `modelfactories:Name` resolves, as a user's package would


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
