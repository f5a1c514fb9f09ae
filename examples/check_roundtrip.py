"""Check that an exported HF folder is the original: same files, same tensor bits, same logits.

Usage: python examples/check_roundtrip.py ORIGINAL_DIR EXPORTED_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            found.update({name: handle.get_tensor(name) for name in handle.keys()})  # noqa: SIM118
    return found


def main(original: Path, exported: Path) -> int:
    for path in sorted(p for p in original.rglob("*") if p.is_file() and p.suffix != ".safetensors"):
        relative = path.relative_to(original)
        if path.read_bytes() != (exported / relative).read_bytes():
            print(f"FAIL: {relative} differs")
            return 1
    left, right = tensors(original), tensors(exported)
    if left.keys() != right.keys():
        print("FAIL: tensor names differ")
        return 1
    for name, tensor in left.items():
        if tensor.dtype != right[name].dtype or not torch.equal(
            tensor.view(torch.uint8), right[name].view(torch.uint8)
        ):
            print(f"FAIL: tensor {name} differs")
            return 1
    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(original).eval()(ids).logits
        b = AutoModelForCausalLM.from_pretrained(exported).eval()(ids).logits
    if not torch.equal(a, b):
        print("FAIL: logits differ")
        return 1
    print(f"round trip OK: {len(left)} tensors bit-exact, files byte-identical, logits identical")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
