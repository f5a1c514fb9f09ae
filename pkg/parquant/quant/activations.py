"""Activation quantization, simulated on a dequantized candidate so validate never flatters it.

A checkpoint that transformers cannot load on a CPU (W4A8, NVFP4, quantized MoE experts) is
validated through parquant's dequantizers, which restore the weights only: without more, its
figures were those of weight-only quantization, although it quantizes activations when served.
This module reads the activation scheme from the checkpoint's `quantization_config`
(compressed-tensors' `input_activations`: bits, float or int, tensor / token / group strategy,
static or dynamic) and its static scales (`input_scale`), and applies the same rounding to the
input of every quantized linear layer while the candidate runs:

- FP8 E4M3 and INT8, per tensor (a static `input_scale`, or absmax / qmax of the tensor), per
  token or per group (dynamic), symmetric;
- NVFP4 (4-bit float, groups of 16): each block's scale is absmax / 6 rounded to FP8 under the
  static global `input_scale`, values rounded to E2M1 (ties to the even code), as ModelOpt and
  AngelSlim define it.

Linear layers and fused MoE experts are reached the same way: every `F.linear` call whose weight is
one of the quantized weights (an `nn.Linear`'s, or one expert's slice of a fused 3-D parameter)
gets its input rounded first. A fused gate/up projection takes the larger of the two static
scales, as vLLM does when it fuses them. Experts whose in-memory layout does not match the
checkpoint's names are counted and reported as not simulated, never silently skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .targets import targeted

FP8_MAX = 448.0
_E2M1_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_EXPERT = re.compile(r"^(?P<experts>.+\.experts)\.(?P<index>\d+)\.(?P<proj>\w+)$")
_GATE_UP = {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj", "w1": "gate_up_proj", "w3": "gate_up_proj"}
_DOWN = {"down_proj": "down_proj", "w2": "down_proj"}


@dataclass(frozen=True)
class ActivationScheme:
    kind: str  # "float8", "int8" or "fp4"
    strategy: str  # "tensor", "token" or "group"
    dynamic: bool
    group_size: int | None = None
    scale: float | None = None  # static per-tensor scale (FP4: the global scale)

    def describe(self) -> str:
        how = "dynamic" if self.dynamic else "static"
        size = f" of {self.group_size}" if self.group_size else ""
        return f"{self.kind} {how} per {self.strategy}{size}"

    def with_scale(self, scale: float | None) -> ActivationScheme:
        return ActivationScheme(self.kind, self.strategy, self.dynamic, self.group_size, scale)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "fp4":
            return _fake_fp4(x, self.group_size or 16, self.scale)
        qmax = FP8_MAX if self.kind == "float8" else 127.0
        values = x.float()
        if self.scale is not None and not self.dynamic:
            scale = torch.tensor(self.scale, dtype=torch.float32)
        elif self.strategy == "token":
            scale = values.abs().amax(dim=-1, keepdim=True) / qmax
        elif self.strategy == "group" and self.group_size:
            width, size = values.shape[-1], self.group_size
            padded = torch.nn.functional.pad(values, (0, -width % size))  # a last, partial group
            grouped = padded.reshape(*padded.shape[:-1], -1, size)
            scale = (grouped.abs().amax(dim=-1, keepdim=True) / qmax).repeat_interleave(size, dim=-1)
            scale = scale.reshape(padded.shape)[..., :width]
        else:
            scale = values.abs().amax() / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        if self.kind == "float8":
            rounded = (values / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()
        else:
            rounded = torch.round(values / scale).clamp(-128, 127)
        return (rounded * scale).to(x.dtype)


def _fake_fp4(x: torch.Tensor, block: int, global_scale: float | None) -> torch.Tensor:
    values = x.float()
    blocks = values.reshape(*values.shape[:-1], -1, block)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    second = torch.tensor(global_scale) if global_scale else values.abs().amax() / 6.0 / FP8_MAX
    per_block = amax / 6.0
    block_scale = torch.where(per_block == 0, torch.ones_like(per_block), per_block / second)
    block_scale = block_scale.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()
    step = block_scale * second
    scaled = blocks / step
    magnitude = scaled.abs()
    index = torch.searchsorted(torch.tensor(_E2M1_BOUNDS), magnitude.contiguous())
    on_odd_bound = torch.zeros_like(magnitude, dtype=torch.bool)
    for position in (1, 3, 5):  # a tie on 0.75, 1.75, 3.5 rounds up to the even code
        on_odd_bound |= magnitude == _E2M1_BOUNDS[position]
    index = index + on_odd_bound.long()
    rounded = torch.tensor(_E2M1_VALUES)[index.clamp(max=7)] * torch.sign(scaled)
    return (rounded * step).reshape(values.shape).to(x.dtype)


def activation_schemes(
    quantization_config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> dict[str, ActivationScheme]:
    """{quantized module: its input's scheme} from a compressed-tensors config and the checkpoint's
    tensors (static scales). Empty for weight-only schemes and other formats."""
    groups = quantization_config.get("config_groups") or {}
    quantized = sorted(
        {n.rsplit(".", 1)[0] for n in tensors if n.endswith((".weight_scale", ".weight_scale_2", ".weight_scale_int4"))}
    )
    schemes: dict[str, ActivationScheme] = {}
    for group in groups.values():
        settings = (group or {}).get("input_activations")
        if not settings:
            continue
        bits, kind = int(settings.get("num_bits", 8)), str(settings.get("type", "float"))
        name = "fp4" if bits == 4 and kind == "float" else "float8" if kind == "float" else "int8"
        strategy = str(settings.get("strategy") or ("group" if settings.get("group_size") else "tensor"))
        base = ActivationScheme(name, strategy, bool(settings.get("dynamic")), settings.get("group_size"))
        for module in quantized:
            if not targeted(module, group.get("targets") or ["Linear"]):
                continue
            scale = tensors.get(f"{module}.input_scale")
            static = float(scale.float().reshape(-1).max()) if scale is not None else None
            schemes[module] = base.with_scale(static)
    return schemes


class ActivationSimulation(torch.overrides.TorchFunctionMode):
    """`with simulation:` every linear call of the listed weights sees its input rounded first."""

    def __init__(self, model: Any, schemes: Mapping[str, ActivationScheme]) -> None:
        super().__init__()
        self.by_weight: dict[tuple[int, tuple[int, ...]], ActivationScheme] = {}
        self.not_simulated: list[str] = []
        modules = dict(model.named_modules())
        fused: dict[tuple[str, str, int], list[ActivationScheme]] = {}
        for name, scheme in schemes.items():
            module = modules.get(name)
            if isinstance(module, torch.nn.Linear):
                self.by_weight[_key(module.weight)] = scheme
                continue
            match = _EXPERT.match(name)
            proj = (_GATE_UP | _DOWN).get(match["proj"]) if match else None
            if match and proj and isinstance(getattr(modules.get(match["experts"]), proj, None), torch.Tensor):
                fused.setdefault((match["experts"], proj, int(match["index"])), []).append(scheme)
            else:
                self.not_simulated.append(name)
        for (experts, proj, index), found in fused.items():
            parameter = getattr(modules[experts], proj)
            scales = [s.scale for s in found if s.scale is not None]
            self.by_weight[_key(parameter[index])] = found[0].with_scale(max(scales) if scales else None)
        self.described = sorted({s.describe() for s in schemes.values()})
        self.simulated = len(schemes) - len(self.not_simulated)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear and len(args) >= 2:
            scheme = self.by_weight.get(_key(args[1]))
            if scheme is not None:
                args = (scheme(args[0]), *args[1:])
        return func(*args, **kwargs)

    def summary(self) -> str:
        if not self.described:
            return "none: the scheme quantizes weights only"
        text = f"{', '.join(self.described)} on {self.simulated} modules (parquant, on the dequantized model)"
        if self.not_simulated:
            text += f"; NOT simulated on {len(self.not_simulated)} modules, e.g. {self.not_simulated[0]}"
        return text


def _key(weight: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    return weight.data_ptr(), tuple(weight.shape)
