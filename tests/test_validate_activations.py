"""validate's figures for candidates it dequantizes itself (NVFP4, quantized MoE experts) include
their activation quantization: they agree with a re-computation written here from the schemes'
definitions (ModelOpt/AngelSlim NVFP4, compressed-tensors FP8), not from parquant's code.

Was: the activations were not quantized at all, so NVFP4 and MoE candidates were reported with
the figures of weight-only quantization.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from parquant.quant.config import load_config
from parquant.stages.hf_import import import_checkpoint
from parquant.stages.quantize import quantize
from parquant.validate import PrecisionValidator
from parquant.weights import WeightLoader

from .conftest import REPO, make_checkpoint
from .helpers import SMALL_CALIBRATION

EVAL_TEXT = REPO / "examples" / "data" / "eval.txt"
SEQ_LEN, MAX_TOKENS = 64, 512
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def fp8_static(x: torch.Tensor, scale: float) -> torch.Tensor:
    """compressed-tensors FP8 E4M3, one static scale: round(x / s) in E4M3, times s."""
    return ((x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale).to(x.dtype)


def nvfp4(x: torch.Tensor, global_scale: float) -> torch.Tensor:
    """NVFP4 activations: blocks of 16; a block's scale is (absmax / 6) / global, stored in E4M3;
    each value goes to the nearest E2M1 magnitude (a tie to the even code), times scale x global."""
    blocks = x.float().reshape(*x.shape[:-1], -1, 16)
    per_block = blocks.abs().amax(-1, keepdim=True) / 6
    scale = torch.where(per_block == 0, torch.ones_like(per_block), per_block / global_scale)
    step = scale.clamp(-448, 448).to(torch.float8_e4m3fn).float() * global_scale
    scaled = blocks / step
    distance = (scaled.abs().unsqueeze(-1) - E2M1).abs()
    nearest = distance == distance.min(-1, keepdim=True).values
    preference = nearest * torch.tensor([2, 1] * 4)  # of two equally near codes, the even one
    value = E2M1[preference.argmax(-1)] * torch.sign(scaled)
    return (value * step).reshape(x.shape).to(x.dtype)


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    root = tmp_path_factory.mktemp("activations")
    made = {}
    for arch, method in (("qwen3", "nvfp4"), ("qwen3_moe", "fp8-static")):
        source = make_checkpoint(root / f"{arch}-hf", arch, vocab_size=4096, dtype="bfloat16")
        import_checkpoint(str(source), str(root / arch))
        config = load_config(flags={"method": method, "backend": "angelslim", **SMALL_CALIBRATION}, environ={})
        torch.manual_seed(0)
        quantize(str(root / arch), str(root / f"{arch}-{method}"), config)
        made[method] = (str(root / arch), str(root / f"{arch}-{method}"))
    return made


def _scale(loader: WeightLoader, name: str) -> float:
    return float(loader.load(name).float().reshape(-1).max())


def _simulated_by_hand(reference: str, candidate: str, method: str) -> float:
    with WeightLoader(reference) as loader:
        ref_model = loader.build_model()
        tokenizer = loader.tokenizer()
    with WeightLoader(candidate) as loader:
        model = loader.build_model(dtype=ref_model.dtype)  # the dequantized weights, nothing else
        names = set(loader.names())
        scales = {n.removesuffix(".input_scale"): _scale(loader, n) for n in names if n.endswith(".input_scale")}
    quantizer = nvfp4 if method == "nvfp4" else fp8_static
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name in scales:
            module.register_forward_pre_hook(lambda _m, args, s=scales[name]: (quantizer(args[0], s),))
        if type(module).__name__ == "Qwen3MoeExperts":
            module.forward = _experts_forward(module, name, scales, quantizer)
    ids = tokenizer(EVAL_TEXT.read_text(), return_tensors="pt").input_ids[0][:MAX_TOKENS]
    cosines = []
    with torch.no_grad():
        for start in range(0, len(ids) - SEQ_LEN + 1, SEQ_LEN):
            window = ids[start : start + SEQ_LEN].unsqueeze(0)
            want, got = ref_model(window).logits[0].double(), model(window).logits[0].double()
            cosines.append(torch.nn.functional.cosine_similarity(want, got, dim=-1))
    return float(torch.cat(cosines).mean())


def _experts_forward(experts: Any, name: str, scales: dict[str, float], quantizer: Any) -> Any:
    """Qwen3-MoE's expert loop, with each expert's inputs quantized by its own static scales (the
    fused gate/up projection takes the larger of gate_proj's and up_proj's, as vLLM does)."""

    def forward(hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden)
        for expert in range(experts.num_experts):
            token, slot = torch.where(top_k_index == expert)
            if len(token) == 0:
                continue
            prefix = f"{name}.{expert}"
            gate_up_scale = max(scales[f"{prefix}.gate_proj"], scales[f"{prefix}.up_proj"])
            x = quantizer(hidden[token], gate_up_scale)
            gate, up = torch.nn.functional.linear(x, experts.gate_up_proj[expert]).chunk(2, dim=-1)
            inner = quantizer(experts.act_fn(gate) * up, scales[f"{prefix}.down_proj"])
            result = torch.nn.functional.linear(inner, experts.down_proj[expert]) * top_k_weights[token, slot, None]
            out.index_add_(0, token, result.to(out.dtype))
        return out

    return forward


@pytest.mark.parametrize("method", ["nvfp4", "fp8-static"])
def test_validate_simulates_activations_as_the_scheme_defines_them(
    candidates: dict[str, tuple[str, str]], method: str
) -> None:
    reference, candidate = candidates[method]
    result = PrecisionValidator(reference, candidate, str(EVAL_TEXT), seq_len=SEQ_LEN, max_tokens=MAX_TOKENS).run()
    expected = _simulated_by_hand(reference, candidate, method)
    assert "NOT simulated" not in result.activation_simulation
    assert result.activation_simulation.startswith("fp4 static" if method == "nvfp4" else "float8 static")
    assert result.logits_cosine_mean == pytest.approx(expected, abs=2e-5), (result.logits_cosine_mean, expected)
