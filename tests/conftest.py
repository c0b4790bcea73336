"""Shared test settings: one thread, deterministic, tiny."""

import os

import pytest
import torch

os.environ.setdefault("NO_COLOR", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
