from __future__ import annotations

import pytest
import torch

# The test networks are tiny: one intra-op thread is as fast as two for them, and it keeps the suite from
# oversubscribing a small shared CI machine (two threads per process on two busy cores is many times slower).
torch.set_num_threads(1)

# --doctest-modules would import every conftest.py as a module named "conftest"; with several of them (one per
# test folder) the second import clashes with the first. They hold fixtures, not doctests: don't collect them.
collect_ignore_glob = ["conftest.py", "*/conftest.py"]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts with one intra-op thread, and a test that changes it does not leak its choice."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sts_data_dir():
    """The real FDG-PET/CT sarcoma patients (``benchmarks/real_data.py``: ``$MONAI_PAIRSYNTH_STS_DIR`` or
    ``../shared/data/sts_pet_ct``); the test is skipped where the folder is absent (a user's machine)."""
    import sys
    from pathlib import Path

    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    from real_data import DATA_DIR_ENV, real_data_dir

    path = real_data_dir()
    if path is None:
        pytest.skip(
            f"no real-patient folder (../shared/data/sts_pet_ct or ${DATA_DIR_ENV}): real-data test skipped"
        )
    return path
