"""Shared test settings: one thread, deterministic, tiny; a clock that counts forward passes."""

import os

import pytest
import torch

os.environ.setdefault("NO_COLOR", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class ForwardClock:
    """A stand-in for the `time` module whose `perf_counter` reads how many forward passes a model has made, so a
    wall-clock budget becomes a budget of forward passes."""

    def __init__(self, model: torch.nn.Module):
        self.passes = 0
        model.register_forward_hook(self._count)

    def _count(self, *_: object) -> None:
        self.passes += 1

    def perf_counter(self) -> float:
        return float(self.passes)


@pytest.fixture
def forward_clock(monkeypatch):
    """`install(model, *modules)`: a `ForwardClock` of `model` as the `time` of each module, for this test."""

    def install(model: torch.nn.Module, *modules: object) -> ForwardClock:
        clock = ForwardClock(model)
        for module in modules:
            monkeypatch.setattr(module, "time", clock)
        return clock

    return install
