import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smoke_workspace(tmp_path_factory):
    """One workspace per test session: the smoke teacher is trained once and shared."""
    from kdbench.runner import Workspace

    return Workspace(tmp_path_factory.mktemp("kdbench"))
