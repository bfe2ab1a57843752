import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
import os


def _shared_data() -> Path:
    """The project's real data sets: $EDGESPLIT_SHARED_DATA, ../shared/data beside the checkout, or /work/shared/data."""
    candidates = [os.environ.get("EDGESPLIT_SHARED_DATA", ""), Path(__file__).resolve().parents[2] / "shared" / "data",
                  "/work/shared/data"]
    return next((Path(c) for c in candidates if c and Path(c).is_dir()), Path(candidates[1]))


SHARED_DATA = _shared_data()
sys.path.insert(0, str(TESTS))  # so `modelfactories:Name` resolves, as a user's package would
BENCH = TESTS.parent / "bench"
sys.path.insert(0, str(BENCH))  # bench/linkemu.py, the link emulator the benchmarks and a few tests use


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: the privacy tests' tensors are tiny, a second thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    from edgesplit.model.data import load_dataset

    return load_dataset("digits")
