"""The CUDA-only decisions, checked on a CPU machine by standing in for torch.cuda's answers
(the real GPU run is bench/gpu_check.sh, for a session with a GPU)."""

import random

import torch

from pipetrace import runfolder
from pipetrace.distributed import DistInfo
from pipetrace.train import resolve_amp, resolve_device


def test_each_torchrun_process_gets_the_gpu_of_its_local_rank():
    dist = DistInfo(world_size=4, rank=3, local_rank=1, backend="nccl")
    for name in ("cuda", "cuda:0"):  # "cuda:0" on every rank would put all ranks on GPU 0
        assert resolve_device(name, dist) == torch.device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda:0")  # no process group: as given
    assert resolve_device("cpu", dist) == torch.device("cpu")


def test_auto_precision_is_bf16_only_where_the_gpu_has_it_natively(monkeypatch):
    gpu = torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulated too
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 0))  # V100
    assert resolve_amp("auto", gpu) == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))  # A100
    assert resolve_amp("auto", gpu) == torch.bfloat16
    assert resolve_amp("off", gpu) is None and resolve_amp("fp16", gpu) == torch.float16


def test_resume_restores_the_gpu_random_states_it_can(monkeypatch):
    """A run saved with 8 visible GPUs resumes on a machine with 1 (and the reverse)."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append(i))
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "cuda": [torch.zeros(16, dtype=torch.uint8)] * 8}
    runfolder.set_rng_state(state)
    assert restored == [0]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    restored.clear()
    runfolder.set_rng_state({**state, "cuda": state["cuda"][:2]})
    assert restored == [0, 1]
