"""Which runtimes load a checkpoint as it is, said before anyone ships it.

transformers on a CPU loads a compressed-tensors checkpoint of a dense model, but not GPTQ, AWQ,
W4A8 or NVFP4 (their kernels are GPU libraries), and not quantized MoE experts: transformers 5
holds an MoE layer's experts fused, so the per-expert quantized weights meet no `nn.Linear` for
compressed-tensors to replace and loading fails (`torch.cat(): expected a non-empty list`). The
rule is the one `WeightLoader.build_model` uses to decide it must dequantize a model itself; the
tests check it against real loads. vLLM needs a GPU, so this machine does not check it
(bench/serve_check.py does, where one is lent).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .detect import has_quantized_experts, needs_parquant_dequantizer

VLLM_UNCHECKED = "not checked here (needs a GPU: bench/serve_check.py)"


def loads_in(config: dict[str, Any], tensor_names: Iterable[str]) -> dict[str, str]:
    """{"transformers_cpu": "yes" | "no: why", "vllm": ...} for a checkpoint's config and tensors."""
    names = list(tensor_names)
    quantization = config.get("quantization_config")
    if not quantization:
        return {"transformers_cpu": "yes", "vllm": "yes (not quantized)"}
    if not needs_parquant_dequantizer(quantization, names):
        return {"transformers_cpu": "yes", "vllm": VLLM_UNCHECKED}
    why = (
        "its MoE experts are quantized, and transformers 5 holds experts fused (no nn.Linear to load them into)"
        if has_quantized_experts(names)
        else "its format has no CPU kernel in transformers"
    )
    return {"transformers_cpu": f"no: {why}", "vllm": VLLM_UNCHECKED}
