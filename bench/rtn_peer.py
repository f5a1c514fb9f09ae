"""The peer of the PTQ benchmark: what a user writes by hand for per-channel int8 RTN in plain torch.

Loads the whole safetensors checkpoint, quantizes every 2-D linear weight (absmax / 127 per output
row, round, clamp), keeps the rest, and saves one safetensors file. Usage: rtn_peer.py SRC DST.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

source, target = Path(sys.argv[1]), Path(sys.argv[2])
state = load_file(source / "model.safetensors")
out = {}
for name, weight in state.items():
    if (weight.ndim == 2 and name.endswith("_proj.weight")) or name == "lm_head.weight":
        scale = weight.float().abs().amax(dim=1, keepdim=True) / 127
        values = torch.round(weight.float() / scale.clamp(min=1e-12)).clamp(-128, 127).to(torch.int8)
        out[name] = values
        out[name.removesuffix("weight") + "weight_scale"] = scale.to(weight.dtype)
    else:
        out[name] = weight
target.mkdir(parents=True)
save_file(out, str(target / "model.safetensors"))
