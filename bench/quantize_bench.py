"""Quantization benchmark: ratios measured side by side in one run.

1. AngelSlim path overhead: on a ~110M-parameter Llama (random bf16 weights, the embedded
   tokenizer), `quantize --method fp8-static` is timed cold (empty cache), and the time spent in
   parquant's own Parquet -> HF export and HF -> Parquet import is divided by the whole wall time.
   Target: <= 15%.
2. Built-in PTQ `int8-weight` throughput on a ~1 GB bf16 model against a plain Parquet -> Parquet
   copy of the same model (pyarrow reading the shard row group by row group and writing it out).
   Target: >= 0.3x. Peak RSS of the quantize process against the largest tensor (<= 2x + 400 MB).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "pkg"), str(REPO / "bench")]

import convert_bench  # noqa: E402

MB = 1_000_000
CALIBRATION = REPO / "examples" / "data" / "calibration.jsonl"


def parquant(*args: str, env: dict[str, str]) -> tuple[float, dict[str, object], int]:
    """Run one stage in a fresh process; (seconds, its JSON result, peak RSS bytes)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "peak_rss.py"), *args, "--quiet"], capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"parquant {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    peak = [int(line.split("=")[1]) for line in done.stderr.splitlines() if line.startswith("peak_rss_bytes=")]
    return seconds, json.loads(done.stdout.strip().splitlines()[-1]), peak[-1]


def make_llama(folder: Path) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(REPO / "examples" / "tiny-llama" / name, folder / name)
    return sum(p.numel() for p in model.parameters())


def angelslim_overhead(work: Path, env: dict[str, str]) -> float:
    params = make_llama(work / "hf")
    parquant("import", str(work / "hf"), "-o", str(work / "pq"), env=env)
    seconds, result, _ = parquant(
        "quantize",
        str(work / "pq"),
        "-o",
        str(work / "fp8"),
        "--method",
        "fp8-static",
        "--backend",
        "angelslim",
        "--calibration-data",
        str(CALIBRATION),
        "--num-samples",
        "32",
        "--seq-len",
        "256",
        env=env,
    )
    details = result["details"]
    assert isinstance(details, dict)
    ours = float(details["export_seconds"]) + float(details["import_seconds"])
    print(
        f"AngelSlim fp8-static on {params / 1e6:.0f}M params: wall {seconds:.1f}s, "
        f"AngelSlim {details['engine_seconds']}s, "
        f"parquant export {details['export_seconds']}s + import {details['import_seconds']}s "
        f"= {ours / seconds:.1%} of the wall time (target <= 15%)"
    )
    return ours / seconds


def plain_parquet_copy(source: Path, target: Path) -> float:
    import pyarrow.parquet as pq

    os.sync()
    started = time.perf_counter()
    target.mkdir()
    for shard in sorted(source.glob("*.parquet")):
        reader = pq.ParquetFile(shard)
        with pq.ParquetWriter(target / shard.name, reader.schema_arrow, compression="none") as writer:
            for group in range(reader.num_row_groups):
                writer.write_table(reader.read_row_group(group))
    return time.perf_counter() - started


def ptq_throughput(work: Path, env: dict[str, str]) -> tuple[float, float]:
    total, largest = convert_bench.make_checkpoint(work / "big-hf", 6)
    (work / "big-hf" / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "hidden_size": convert_bench.HIDDEN,
                "intermediate_size": 4 * convert_bench.HIDDEN,
                "num_hidden_layers": 6,
                "num_attention_heads": 16,
                "num_key_value_heads": 4,
                "vocab_size": convert_bench.VOCAB,
                "tie_word_embeddings": False,
            }
        )
    )
    parquant("import", str(work / "big-hf"), "-o", str(work / "big"), env=env)
    copies, quantized, peaks = [], [], []
    for round_ in range(3):
        copies.append(plain_parquet_copy(work / "big", work / f"copy{round_}"))
        os.sync()
        seconds, _, peak = parquant(
            "quantize",
            str(work / "big"),
            "-o",
            str(work / f"int8-{round_}"),
            "--method",
            "int8-weight",
            "--backend",
            "ptq",
            env=env,
        )
        quantized.append(seconds)
        peaks.append(peak)
        shutil.rmtree(work / f"copy{round_}")
        shutil.rmtree(work / f"int8-{round_}")
    copy_s, quant_s = sorted(copies)[1], sorted(quantized)[1]
    ratio = copy_s / quant_s
    peak = max(peaks)
    print(
        f"PTQ int8-weight on {total / 1e9:.2f} GB: {total / quant_s / MB:.0f} MB/s vs plain Parquet copy "
        f"{total / copy_s / MB:.0f} MB/s = {ratio:.2f}x (target >= 0.3x); peak RSS {peak / MB:.0f} MB = "
        f"{peak / largest:.2f}x the largest tensor (budget {(2 * largest + 400 * MB) / MB:.0f} MB)"
    )
    return ratio, peak - (2 * largest + 400 * MB)


def main() -> int:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'pkg'}:{REPO / 'cmd'}"}
    with tempfile.TemporaryDirectory(prefix="parquant-qbench-") as folder:
        work = Path(folder)
        env["PARQUANT_CACHE_DIR"] = str(work / "cache")
        overhead = angelslim_overhead(work, env)
        ratio, over_budget = ptq_throughput(work, env)
    ok = overhead <= 0.15 and ratio >= 0.3 and over_budget <= 0
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
