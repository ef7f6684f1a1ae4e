"""Shared pytest fixtures."""
import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shared_data_root() -> str:
    """``$SSPRL_SHARED_DATA`` if set, else ``<repo>/../shared/data`` (may not exist)."""
    return os.environ.get("SSPRL_SHARED_DATA") or os.path.join(REPO_ROOT, "..", "shared", "data")


@pytest.fixture(scope="session")
def shared_data_dir() -> str:
    """Folder of the real COCO subset ``coco128_train2017`` (``images/`` and
    ``instances_train2017.json``); the test is skipped where it is absent."""
    path = os.path.abspath(os.path.join(shared_data_root(), "coco128_train2017"))
    if not os.path.isfile(os.path.join(path, "instances_train2017.json")):
        pytest.skip(f"real validation data not found at {path} (set SSPRL_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def demo_root() -> str:
    """Root of the default demo dataset (generated into the cache on first use, ~10 s)."""
    from ssprl_d2.data.demo import get_demo_root

    return get_demo_root()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: tiny convolutions are dominated by thread synchronisation,
    badly so when other processes share the 2 cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
