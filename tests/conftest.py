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
