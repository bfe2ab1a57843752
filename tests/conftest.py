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


@pytest.fixture(scope="session")
def small_cnn_on_digits_state() -> dict[str, torch.Tensor]:
    """The weights of small_cnn trained two epochs on digits (about 97% test accuracy), trained once per session for
    the privacy tests that use it (test_privacy_trained.py, test_privacy_defenses.py); each loads them into a model
    of its own, so what one file does to its model never reaches another."""
    from edgesplit.model.data import load_dataset
    from edgesplit.model.train import train_classifier
    from edgesplit.model.zoo import small_cnn

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as those files ran it, under their module's `one_thread`
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = small_cnn()
            result = train_classifier(net, load_dataset("digits"), epochs=2, batch_size=64, lr=3e-3, seed=0,
                                      progress=False)
    finally:
        torch.set_num_threads(threads)
    assert result.test_accuracy > 0.9
    return {name: tensor.clone() for name, tensor in net.state_dict().items()}


def trained_small_cnn(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A new small_cnn holding ``state`` (from ``small_cnn_on_digits_state``), in eval mode as training left it."""
    from edgesplit.model.zoo import small_cnn

    with torch.random.fork_rng():  # building draws initial weights: leave the global generator as it was
        net = small_cnn()
    net.load_state_dict(state)
    return net.eval()
