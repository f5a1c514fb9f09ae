"""The CPU adapter for AngelSlim: each bridge does what its docstring promises, and no more."""

from __future__ import annotations

import sys

import pytest
import torch

from parquant.errors import UnavailableError
from parquant.quant.angelslim_compat import host_as_cuda, load_angelslim


def test_angelslim_imports_through_the_adapter() -> None:
    engine = load_angelslim()
    assert hasattr(engine, "Engine")


def test_qat_stand_ins_refuse_to_be_used() -> None:
    load_angelslim()
    qat = sys.modules["angelslim.compressor.qat.qat"]
    with pytest.raises(UnavailableError, match="QAT package"):
        qat.QAT()
    quantizer = sys.modules["angelslim.compressor.qat.modules.quantizer"]
    with pytest.raises(UnavailableError):
        quantizer.fp8_cast_ste()


def test_triton_stand_in_kernels_refuse_to_launch() -> None:
    load_angelslim()
    triton = sys.modules["triton"]
    kernel = triton.jit(lambda x: x)
    with pytest.raises(UnavailableError, match="needs a GPU"):
        kernel[(1,)](1)
    assert triton.cdiv(7, 2) == 4


def test_host_as_cuda_copies_like_a_transfer_and_restores_everything() -> None:
    load_angelslim()
    original_synchronize = torch.cuda.synchronize
    backup = torch.ones(4)
    with host_as_cuda():
        moved = backup.to("cuda:0")
        assert moved.device.type == "cpu"
        moved.mul_(3)  # the AWQ pattern: scaling the restored weight must not touch the backup
        assert torch.equal(backup, torch.ones(4))
        assert torch.zeros(2, device="cuda:0").device.type == "cpu"
        assert torch.arange(3, device=torch.device("cuda", 0)).tolist() == [0, 1, 2]
        module = torch.nn.Linear(2, 2).to("cuda:0")
        assert module.weight.device.type == "cpu"
        assert backup.cuda().data_ptr() != backup.data_ptr()
        torch.cuda.synchronize()
        same = backup.to("cpu")
        assert same.data_ptr() == backup.data_ptr()  # ordinary CPU moves keep their semantics
    assert torch.cuda.synchronize is original_synchronize
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1, device="cuda:0")
