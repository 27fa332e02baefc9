import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smoke_workspace(tmp_path_factory):
    """One workspace per test session: the smoke teacher is trained once and shared."""
    from kdbench.train.runner import Workspace

    return Workspace(tmp_path_factory.mktemp("kdbench"))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of tiny tensors: on a shared 2-core machine two
    OpenMP threads under contention made a step 10-50x slower (measured); restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
