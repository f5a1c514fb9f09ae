"""Serve check (GPU): every method's export loaded by vLLM, generating, against the dequantized reference.

For each model (a SmolLM2-135M-shaped random Llama and a tiny random Qwen3-MoE, both made here)
and each method: `parquant quantize` (on the GPU), `parquant export`, then vLLM loads the folder
and generates greedily from fixed prompts. Recorded per run: whether it loaded, the quantization
kernel vLLM picked for a linear layer (its quant method / compressed-tensors scheme class),
tokens/s, and the share of generated tokens equal to those of parquant's dequantized model
(`WeightLoader.build_model`, run by transformers on the same GPU). Results:
bench/results/serve_check_<gpu>.json.

    python bench/serve_check.py [--methods fp8-block int8-weight ...] [--vllm-spec vllm==0.33.0]

vLLM is installed from PyPI when it does not import (`--vllm-spec`, pinned); a host without
registry access needs its wheels carried (`pip download vllm==0.33.0 -d wheels`, then
`pip install --no-index -f wheels vllm`). Needs a CUDA GPU; on a CPU-only host it exits 69.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "pkg"), str(REPO / "bench"), str(REPO)]

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Quantization reduces", "Once upon a time"]
NEW_TOKENS = 24


def ensure_vllm(spec: str) -> Any:
    try:
        import vllm
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", spec], check=True)
        import vllm
    return vllm


def make_models(work: Path) -> dict[str, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from parquant.stages.hf_import import import_checkpoint
    from tests.conftest import EXAMPLE_MODEL, TOKENIZER_FILES, make_checkpoint

    # SmolLM2-135M's shapes with random weights and the embedded tokenizer's vocabulary (no hub here)
    smol = work / "smollm2-135m-shaped"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=4096, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, tie_word_embeddings=True, max_position_embeddings=2048,
    )  # fmt: skip
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(smol)
    for name in TOKENIZER_FILES:
        if (EXAMPLE_MODEL / name).exists():
            (smol / name).write_bytes((EXAMPLE_MODEL / name).read_bytes())
    moe = make_checkpoint(work / "tiny-qwen3-moe", "qwen3_moe", vocab_size=4096, dtype="bfloat16")
    models = {}
    for name, folder in (("smollm2-135m-shaped", smol), ("tiny-qwen3-moe", moe)):
        import_checkpoint(str(folder), str(work / f"{name}.pq"))
        models[name] = work / f"{name}.pq"
    return models


def kernels(llm: Any) -> list[str]:
    """The quantization classes vLLM chose for the model's linear layers."""

    def collect(model: Any) -> list[str]:
        found = set()
        for module in model.modules():
            method = getattr(module, "quant_method", None)
            scheme = getattr(module, "scheme", None)
            if method is not None:
                found.add(type(method).__name__ + (f"/{type(scheme).__name__}" if scheme is not None else ""))
        return sorted(found)

    try:
        return [name for names in llm.apply_model(collect) for name in names]
    except Exception as exc:  # older vLLM without apply_model
        return [f"unknown ({type(exc).__name__})"]


def reference_tokens(model_url: str, tokenizer: Any) -> list[list[int]]:
    import torch

    from parquant.weights import WeightLoader

    with WeightLoader(model_url) as loader:
        model = loader.build_model().to("cuda")
    outputs = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to("cuda")
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
        outputs.append(out[0, ids.shape[1] :].tolist())
    return outputs


def check(vllm: Any, model: Path, method: str, work: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from parquant.quant.config import load_config
    from parquant.stages.hf_export import export_checkpoint
    from parquant.stages.quantize import quantize

    flags: dict[str, Any] = {"method": method, "device": "cuda"}
    calibration = REPO / "examples" / "data" / "calibration.jsonl"
    quantized = work / f"{model.stem}-{method}"
    row: dict[str, Any] = {"model": model.stem, "method": method}
    try:
        result = quantize(
            str(model), str(quantized), load_config(flags={**flags, "calibration.data": str(calibration)})
        )
        row.update(backend=result.details["backend"], effective_method=result.details["method"])
        folder = work / f"{model.stem}-{method}-hf"
        export_checkpoint(str(quantized), str(folder))
        llm = vllm.LLM(model=str(folder), dtype="bfloat16", enforce_eager=True, gpu_memory_utilization=0.3)
        row["kernels"] = kernels(llm)
        params = vllm.SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
        started = time.perf_counter()
        generated = llm.generate(PROMPTS, params)
        seconds = time.perf_counter() - started
        tokens = [list(g.outputs[0].token_ids) for g in generated]
        row["tokens_per_second"] = round(sum(map(len, tokens)) / seconds, 1)
        expected = reference_tokens(str(quantized), AutoTokenizer.from_pretrained(folder))
        same = sum(a == b for got, want in zip(tokens, expected, strict=True) for a, b in zip(got, want, strict=False))
        row["greedy_agreement"] = round(same / sum(map(len, expected)), 3)
        row["loaded"] = True
        del llm
    except Exception as exc:
        row.update(loaded=False, error=f"{type(exc).__name__}: {str(exc)[:300]}")
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    import torch

    from parquant.quant import methods

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(methods.method_names()))
    parser.add_argument("--vllm-spec", default="vllm==0.33.0")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("serve_check needs a CUDA GPU", file=sys.stderr)
        return 69
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # apply_model reaches the model in-process
    vllm = ensure_vllm(args.vllm_spec)
    with tempfile.TemporaryDirectory(prefix="parquant-serve-") as folder:
        work = Path(folder)
        rows = [check(vllm, model, method, work) for model in make_models(work).values() for method in args.methods]
    gpu = torch.cuda.get_device_name(0).replace(" ", "_").lower()
    out = REPO / "bench" / "results" / f"serve_check_{gpu}.json"
    payload = {"vllm": vllm.__version__, "torch": torch.__version__, "gpu": gpu, "rows": rows}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if all(r["loaded"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
