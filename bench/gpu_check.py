"""GPU check: every AngelSlim method through `parquant quantize` on a CUDA device, unmodified.

Run on a machine with a GPU (see docs/quantize.md): it quantizes the embedded model with
`--device cuda --backend angelslim --no-fallback`, checks that no CPU adapter or fallback was
involved, and prints time and logits cosine against the original for each method. With
`--larger`, it also times fp8-static on a ~134M-parameter random Llama, CPU vs GPU side by side.

A GPU host without registry access needs the wheels carried (Python 3.12 there):
  pip download --no-deps --python-version 3.12 --only-binary=:all: -d .gpu-wheels angelslim==0.5.0 \
      transformers==5.23.0 compressed-tensors loguru pydantic pydantic-core typing-inspection \
      annotated-types typing-extensions datasets dill multiprocess shortuuid crc32c argparse-dataclass gguf
  then there: python3 -m pip install --no-index --no-deps .gpu-wheels/*.whl
Results of the run on an H100 are in bench/results/gpu_check_h100.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "pkg"), str(REPO / "bench")]

from parquant.quant.config import load_config  # noqa: E402
from parquant.stages.hf_import import import_checkpoint  # noqa: E402
from parquant.stages.quantize import quantize  # noqa: E402
from parquant.weights import WeightLoader  # noqa: E402

METHODS = ("fp8-static", "fp8-dynamic", "int8-dynamic", "int4-gptq", "int4-awq")
CALIBRATION = REPO / "examples" / "data" / "calibration.jsonl"


def logits(model_url: str, ids: torch.Tensor) -> torch.Tensor:
    with WeightLoader(model_url) as loader:
        model = loader.build_model()
    with torch.no_grad():
        return model(ids).logits.float()


def run_method(
    tiny: str, work: Path, method: str, device: str, ids: torch.Tensor, base: torch.Tensor
) -> dict[str, object]:
    flags = {
        "method": method,
        "backend": "angelslim",
        "device": device,
        "fallback": False,
        "calibration.data": str(CALIBRATION),
        "calibration.num_samples": 32,
        "calibration.seq_len": 256,
    }
    config = load_config(flags=flags, environ={})
    started = time.perf_counter()
    result = quantize(tiny, str(work / f"{method}-{device}"), config)
    seconds = time.perf_counter() - started
    similarity = torch.nn.functional.cosine_similarity(logits(str(work / f"{method}-{device}"), ids), base, dim=-1)
    return {
        "method": method,
        "device": result.details["device"],
        "fallbacks": result.details["fallbacks"],
        "seconds": round(seconds, 2),
        "engine_seconds": result.details.get("engine_seconds"),
        "logits_cosine_mean": round(float(similarity.mean()), 5),
        "logits_cosine_worst": round(float(similarity.min()), 5),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--larger", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU")
        return 2
    from transformers import AutoTokenizer

    report: dict[str, object] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        os.environ.setdefault("PARQUANT_CACHE_DIR", str(work / "cache"))
        tiny = str(work / "tiny")
        import_checkpoint(str(REPO / "examples" / "tiny-llama"), tiny)
        tokenizer = AutoTokenizer.from_pretrained(REPO / "examples" / "tiny-llama")
        text = (REPO / "examples" / "data" / "eval.txt").read_text()[:8000]
        ids = tokenizer(text, return_tensors="pt").input_ids[:, :256]
        base = logits(tiny, ids)
        rows = []
        for method in METHODS:
            try:
                rows.append(run_method(tiny, work, method, "cuda", ids, base))
            except Exception as exc:  # report every method, whatever fails
                rows.append({"method": method, "error": f"{type(exc).__name__}: {exc}"[:400]})
            print(json.dumps(rows[-1]), flush=True)
        report["methods"] = rows
        if args.larger:
            import quantize_bench

            quantize_bench.make_llama(work / "big-hf")
            import_checkpoint(str(work / "big-hf"), str(work / "big"))
            for device in ("cpu", "cuda"):
                config = load_config(
                    flags={
                        "method": "fp8-static",
                        "backend": "angelslim",
                        "device": device,
                        "calibration.data": str(CALIBRATION),
                        "calibration.num_samples": 32,
                        "calibration.seq_len": 256,
                    },
                    environ={},
                )
                started = time.perf_counter()
                result = quantize(str(work / "big"), str(work / f"big-{device}"), config)
                report[f"larger_fp8_static_{device}_seconds"] = round(time.perf_counter() - started, 2)
                report[f"larger_fp8_static_{device}_details"] = result.details
                print(device, report[f"larger_fp8_static_{device}_seconds"], flush=True)
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    failed = [r for r in rows if "error" in r or r.get("device") != "cuda" or r.get("fallbacks")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
