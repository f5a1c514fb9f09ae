"""The measurements behind docs/tutorials/performance.md: one table per knob, printed as Markdown.

Knobs: chunk size and shard size (import of a 0.54 GB bf16 checkpoint), fan-out (the same import
by 1 and 2 local workers), torch threads (built-in PTQ), calibration samples (fp8-static and
int4-gptq on the embedded model: time and precision). Every step runs in a fresh process, medians
of `--rounds`. Usage: python bench/tuning.py > table.md
"""

from __future__ import annotations

import argparse
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

EMBEDDED = REPO / "examples" / "tiny-llama"
CALIBRATION = REPO / "examples" / "data" / "calibration.jsonl"
EVAL = REPO / "examples" / "data" / "eval.txt"


def parquant(*args: object, env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "parquant_cli", *map(str, args), "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if done.returncode not in (0, 79):  # 79: a precision gate failed, the figures are still measured
        raise SystemExit(f"parquant {' '.join(map(str, args))} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started, done.stdout


def median_run(rounds: int, before: object, *args: object, env: dict[str, str] | None = None) -> float:
    samples = []
    for _ in range(rounds):
        shutil.rmtree(before, ignore_errors=True)  # type: ignore[arg-type]
        os.sync()
        samples.append(parquant(*args, env=env)[0])
    return statistics.median(samples)


def conversion(work: Path, rounds: int) -> list[str]:
    total, _ = convert_bench.make_checkpoint(work / "hf", 2)
    out = work / "pq"
    rows = ["| knob | value | import wall (s) | MB/s |", "|---|---|---|---|"]
    for chunk in ("1MiB", "4MiB", "16MiB", "64MiB"):
        seconds = median_run(rounds, out, "import", work / "hf", "-o", out, "--chunk-size", chunk)
        rows.append(f"| --chunk-size | {chunk}{' (default)' if chunk == '16MiB' else ''} | {seconds:.2f} | "
                    f"{total / seconds / 1e6:.0f} |")  # fmt: skip
    for shard in ("128MiB", "2GiB"):
        seconds = median_run(rounds, out, "import", work / "hf", "-o", out, "--shard-size", shard)
        rows.append(f"| --shard-size | {shard}{' (default)' if shard == '2GiB' else ''} | {seconds:.2f} | "
                    f"{total / seconds / 1e6:.0f} |")  # fmt: skip
    for workers in (1, 2):
        samples = []
        for _ in range(rounds):
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            started = time.perf_counter()
            if workers == 1:
                parquant("import", work / "hf", "-o", out, "--shard-size", "128MiB")
            else:
                procs = [
                    subprocess.Popen(
                        [sys.executable, "-m", "parquant_cli", "import", str(work / "hf"), "-o", str(out),
                         "--shard-size", "128MiB", "--shard-count", "2", "--shard-index", str(i), "--quiet"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )
                    for i in range(2)
                ]  # fmt: skip
                if any(p.wait() for p in procs):
                    raise SystemExit("a fan-out worker failed")
                parquant("import", work / "hf", "-o", out, "--shard-size", "128MiB")  # the commit
            samples.append(time.perf_counter() - started)
        seconds = statistics.median(samples)
        rows.append(f"| fan-out workers (128MiB shards) | {workers} | {seconds:.2f} | {total / seconds / 1e6:.0f} |")
    return rows


def threads(work: Path, rounds: int) -> list[str]:
    (work / "hf" / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": convert_bench.HIDDEN,
                "intermediate_size": 4 * convert_bench.HIDDEN,
                "num_hidden_layers": 2,
                "num_attention_heads": 16,
                "num_key_value_heads": 4,
                "vocab_size": convert_bench.VOCAB,
                "tie_word_embeddings": False,
            }
        )
    )
    parquant("import", work / "hf", "-o", work / "pq", "--force")
    rows = ["| OMP_NUM_THREADS | int8-weight PTQ wall (s) |", "|---|---|"]
    parquant("quantize", work / "pq", "-o", work / "q", "--method", "int8-weight", "--force")  # caches the layout
    for count in ("1", "2", "4", "unset (parquant picks)"):
        env = {"OMP_NUM_THREADS": count} if count.isdigit() else {}
        seconds = median_run(
            rounds, work / "q", "quantize", work / "pq", "-o", work / "q", "--method", "int8-weight", env=env
        )
        rows.append(f"| {count} | {seconds:.2f} |")
    return rows


def calibration(work: Path) -> list[str]:
    parquant("import", EMBEDDED, "-o", work / "tiny")
    rows = [
        "| method | --num-samples x --seq-len | quantize wall (s) | logits cosine | ppl ratio |",
        "|---|---|---|---|---|",
    ]
    for method in ("fp8-static", "int4-gptq"):
        for samples in (8, 32, 128):
            out = work / f"{method}-{samples}"
            seconds, _ = parquant(
                "quantize", work / "tiny", "-o", out, "--method", method, "--backend", "angelslim",
                "--calibration-data", CALIBRATION, "--num-samples", samples, "--seq-len", 128,
            )  # fmt: skip
            _, checked = parquant("validate", work / "tiny", out, "--eval-text", EVAL, "--json")
            result = json.loads(checked)
            rows.append(
                f"| {method} | {samples} x 128 | {seconds:.1f} | {result['logits_cosine_mean']:.4f} | "
                f"{result['perplexity_ratio']:.4f} |"
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="parquant-tuning-") as folder:
        work = Path(folder)
        env_cache = {"PARQUANT_CACHE_DIR": str(work / "cache")}
        os.environ.update(env_cache)
        for title, measure in (
            ("Chunk size, shard size, fan-out (import, 0.54 GB)", lambda: conversion(work, args.rounds)),
            ("Threads (built-in PTQ, 0.54 GB)", lambda: threads(work, args.rounds)),
            ("Calibration samples (embedded model, AngelSlim on CPU)", lambda: calibration(work)),
        ):
            rows = measure()
            print(f"\n### {title}\n")
            print("\n".join(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
