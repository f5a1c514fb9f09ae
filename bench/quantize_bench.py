"""Quantization benchmark: ratios measured side by side in one run.

1. AngelSlim path overhead: on a ~110M-parameter Llama (random bf16 weights, the embedded
   tokenizer), `quantize --method fp8-static` and `fp8-dynamic` through AngelSlim, cold (empty
   cache: the Parquet -> HF export runs) and warm (the cached export is reused). Overhead = time in
   parquant's own Parquet -> HF export and HF -> Parquet import / the whole wall time. Target <= 5%.
2. Built-in PTQ `int8-weight`, `int8-dynamic`, `fp8-dynamic` on a ~1 GB bf16 model against a plain
   Parquet -> Parquet copy of the same model (pyarrow reading each row group and writing it out).
   Target >= 0.5x. And `int8-weight` against `bench/rtn_peer.py`, a user's plain torch per-channel
   RTN script on the same model's safetensors (target: parquant faster, >= 1x). Peak RSS of the
   quantize process against the largest tensor (<= 2x + 400 MB).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "pkg"), str(REPO / "bench")]

import convert_bench  # noqa: E402
from figures import Figure, table  # noqa: E402

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


def make_llama(folder: Path, hidden: int = 768, intermediate: int = 2048, layers: int = 12, heads: int = 12) -> int:
    """A random bf16 Llama saved by transformers, with the embedded tokenizer; its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(REPO / "examples" / "tiny-llama" / name, folder / name)
    return sum(p.numel() for p in model.parameters())


def angelslim_overhead(work: Path, env: dict[str, str]) -> list[Figure]:
    params = make_llama(work / "hf")
    parquant("import", str(work / "hf"), "-o", str(work / "pq"), env=env)
    found = []
    for method in ("fp8-static", "fp8-dynamic"):
        for mode in ("cold", "warm"):
            if mode == "cold":
                shutil.rmtree(work / "cache", ignore_errors=True)
            output = work / f"{method}-{mode}"
            seconds, result, _ = parquant(
                "quantize",
                str(work / "pq"),
                "-o",
                str(output),
                "--method",
                method,
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
            shutil.rmtree(output)
            details = result["details"]
            assert isinstance(details, dict)
            ours = float(details["export_seconds"]) + float(details["import_seconds"])
            found.append(
                Figure(
                    "5 AngelSlim overhead",
                    f"{method} ({params / 1e6:.0f}M params, {mode} cache): parquant's export + import / wall",
                    100 * ours / seconds,
                    5.0,
                    False,
                    "%",
                    f"wall {seconds:.1f} s, AngelSlim {details['engine_seconds']} s, export "
                    f"{details['export_seconds']} s, import {details['import_seconds']} s",
                )
            )
    return found


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


def rtn_peer(source: Path, target: Path) -> float:
    os.sync()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "bench" / "rtn_peer.py"), str(source), str(target)])
    if done.returncode != 0:
        raise SystemExit("bench/rtn_peer.py failed")
    return time.perf_counter() - started


def ptq_throughput(work: Path, env: dict[str, str], rounds: int = 3) -> list[Figure]:
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
    parquant("quantize", str(work / "big"), "-o", str(work / "warm-up"), "--method", "int8-weight", env=env)
    shutil.rmtree(work / "warm-up")  # the architecture's layer list is cached after the first run
    methods = ("int8-weight", "int8-dynamic", "fp8-dynamic")
    copies: list[float] = []
    peers: list[float] = []
    times: dict[str, list[float]] = {m: [] for m in methods}
    peaks: list[int] = []
    for _ in range(rounds):
        copies.append(plain_parquet_copy(work / "big", work / "copy"))
        shutil.rmtree(work / "copy")
        peers.append(rtn_peer(work / "big-hf", work / "peer"))
        shutil.rmtree(work / "peer")
        for method in methods:
            os.sync()
            seconds, _, peak = parquant(
                "quantize", str(work / "big"), "-o", str(work / "q"), "--method", method, "--backend", "ptq", env=env
            )
            times[method].append(seconds)
            peaks.append(peak)
            shutil.rmtree(work / "q")
    copy_s, peer_s = statistics.median(copies), statistics.median(peers)
    found = []
    for method in methods:
        seconds = statistics.median(times[method])
        found.append(
            Figure(
                "2 PTQ",
                f"{method} / plain Parquet copy ({total / 1e9:.2f} GB)",
                copy_s / seconds,
                0.5,
                True,
                "x",
                f"{total / seconds / MB:.0f} MB/s vs {total / copy_s / MB:.0f} MB/s",
            )
        )
    int8 = statistics.median(times["int8-weight"])
    found.append(
        Figure(
            "2 PTQ",
            "int8-weight speed / plain torch RTN script (bench/rtn_peer.py)",
            peer_s / int8,
            1.0,
            True,
            "x",
            f"parquant {int8:.1f} s, script {peer_s:.1f} s",
        )
    )
    budget = 2 * largest + 400 * MB
    found.append(
        Figure(
            "2 PTQ",
            "quantize peak RSS / budget",
            max(peaks) / budget,
            1.0,
            False,
            "x",
            f"{max(peaks) / MB:.0f} MB; budget 2 x {largest / MB:.0f} MB + 400 MB",
        )
    )
    return found


def figures(work: Path) -> list[Figure]:
    env = {**os.environ, "PARQUANT_CACHE_DIR": str(work / "cache")}
    return angelslim_overhead(work, env) + ptq_throughput(work, env)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="parquant-qbench-") as folder:
        measured = figures(Path(folder))
    print(table(measured))
    return 0 if all(f.passed for f in measured) else 1


if __name__ == "__main__":
    sys.exit(main())
