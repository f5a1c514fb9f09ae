"""Assertions shared by tests: checkpoints equal to the bit, logits equal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open


def checkpoint_tensors(folder: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
                found[name] = handle.get_tensor(name)
    return found


def assert_same_checkpoint(original: Path, exported: Path) -> None:
    """Every non-tensor file byte-identical, every tensor bit-identical (same dtype, shape, bytes)."""
    originals = {p.relative_to(original).as_posix() for p in original.rglob("*") if p.is_file()}
    # export's own record of what it wrote (hidden: transformers and a later import ignore it)
    exporteds = {
        p.relative_to(exported).as_posix()
        for p in exported.rglob("*")
        if p.is_file() and p.name != ".parquant-export.json"
    }
    assert {n for n in originals if not n.endswith(".safetensors")} == {
        n for n in exporteds if not n.endswith(".safetensors")
    }
    for name in originals:
        if not name.endswith(".safetensors"):
            assert (original / name).read_bytes() == (exported / name).read_bytes(), name
    left, right = checkpoint_tensors(original), checkpoint_tensors(exported)
    assert left.keys() == right.keys()
    for name, tensor in left.items():
        assert tensor.dtype == right[name].dtype and tensor.shape == right[name].shape, name
        assert torch.equal(tensor.contiguous().view(torch.uint8), right[name].contiguous().view(torch.uint8)), name


def logits(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.arange(1, 25).unsqueeze(0)).logits


# A calibration set small enough for the CPU: the embedded model's data, 8 samples of 128 tokens.
SMALL_CALIBRATION: dict[str, object] = {
    "calibration.data": str(Path(__file__).resolve().parents[1] / "examples" / "data" / "calibration.jsonl"),
    "calibration.num_samples": 8,
    "calibration.seq_len": 128,
}


def validate_and_report(model: Path, candidate: Path, work: Path) -> tuple[Any, list[str]]:
    """The candidate validated against its model (512 tokens of the embedded eval text) and that
    result reported: what a method or a backend made must go through both."""
    from parquant.stages.report import report
    from parquant.stages.validate import validate

    checked = validate(
        str(model),
        str(candidate),
        str(Path(__file__).resolve().parents[1] / "examples" / "data" / "eval.txt"),
        output=str(work / "validate.json"),
        max_tokens=512,
    )
    return checked, report([str(work / "validate.json")], str(work / "report"))
