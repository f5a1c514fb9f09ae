"""Quantize fan-out benchmark: fp8-block on a >= 4 GB synthetic model, 1 worker vs 2, side by side.

One run, same disk, same model: the single-worker quantize, then two workers started together
(each `parquant quantize --shard-index i --shard-count 2` in its own process, exactly what
`--workers 2` and an Indexed Job's pods run) and the commit, then `--workers 2` itself end to end.
Every run's shards are compared byte for byte with the single worker's. Each worker's peak RSS
(VmHWM, bench/peak_rss.py) is set against the single run's on a model an eighth of the size: a
worker streams tensor by tensor, so its memory is bounded by the largest tensor and the chunk
size, not by the model. Targets (MoE/fan-out issue): speed-up >= 1.2x with 2 workers on 2 cores;
worker peak RSS <= 1.15x the small model's single run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "pkg"), str(REPO / "bench")]

from convert_bench import make_checkpoint, same_bytes  # noqa: E402
from figures import Figure, table  # noqa: E402

GB = 1e9
PEAK = str(REPO / "bench" / "peak_rss.py")


def _start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, PEAK, *args, "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )


def _finish(process: subprocess.Popen[str]) -> int:
    _, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, process.args))} failed:\n{err[-3000:]}")
    return [int(line.split("=")[1]) for line in err.splitlines() if line.startswith("peak_rss_bytes=")][-1]


def _timed(*commands: list[str], env: dict[str, str]) -> tuple[float, list[int]]:
    """Start the commands together, wait for all; (wall seconds, each one's peak RSS)."""
    os.sync()
    started = time.perf_counter()
    peaks = [_finish(p) for p in [_start(*c, env=env) for c in commands]]
    return time.perf_counter() - started, peaks


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def figures(work: Path, layers: int = 32) -> list[Figure]:
    env = {**os.environ, "PARQUANT_CACHE_DIR": str(work / "cache")}
    model_bytes, largest = make_checkpoint(work / "hf", layers)
    small_bytes, _ = make_checkpoint(work / "hf-small", layers // 8)
    for name in ("hf", "hf-small"):
        subprocess.run(["parquant", "import", str(work / name), "-o", str(work / f"pq-{name}"), "--quiet"], check=True,
                       env=env, stdout=subprocess.DEVNULL)  # fmt: skip
    flags = ["--method", "fp8-block", "--shard-size", "256MB"]  # 9 shards: work for each worker
    source = str(work / "pq-hf")
    _, (small_peak,) = _timed(["quantize", str(work / "pq-hf-small"), "-o", str(work / "small"), *flags], env=env)
    one, (one_peak,) = _timed(["quantize", source, "-o", str(work / "one"), *flags], env=env)
    workers = [["quantize", source, "-o", str(work / "two"), *flags, "--shard-count", "2", "--shard-index", str(i)]
               for i in range(2)]  # fmt: skip
    parts, worker_peaks = _timed(*workers, env=env)
    commit, _ = _timed(["quantize", source, "-o", str(work / "two"), *flags], env=env)
    two = parts + commit
    local, _ = _timed(["quantize", source, "-o", str(work / "local"), *flags, "--workers", "2"], env=env)
    shards = _shards(work / "one")
    identical = [same_bytes(p, work / other / p.name) for other in ("two", "local") for p in shards]
    if not shards or not all(identical):
        raise SystemExit("fan-out shards differ from the single worker's")
    detail = f"{model_bytes / GB:.2f} GB model, {len(shards)} shards identical to the single worker's"
    return [
        Figure(
            "fan-out",
            "fp8-block speed-up, 2 workers (Indexed-Job style) vs 1",
            one / two,
            1.2,
            True,
            detail=f"1 worker {one:.1f} s; 2 workers {parts:.1f} s + commit {commit:.1f} s; {detail}",
        ),
        Figure(
            "fan-out",
            "fp8-block speed-up, --workers 2 vs 1",
            one / local,
            1.2,
            True,
            detail=f"1 worker {one:.1f} s; --workers 2 {local:.1f} s ({os.cpu_count()} CPUs)",
        ),
        Figure(
            "fan-out",
            "worker peak RSS / single run on a model 1/8 the size",
            max(worker_peaks) / small_peak,
            1.15,
            False,
            detail=(
                f"workers {', '.join(f'{p / 1e6:.0f}' for p in worker_peaks)} MB, single run {one_peak / 1e6:.0f} MB "
                f"({model_bytes / GB:.2f} GB), small model {small_peak / 1e6:.0f} MB ({small_bytes / GB:.2f} GB); "
                f"largest tensor {largest / 1e6:.0f} MB"
            ),
        ),
    ]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="parquant-fanout-") as folder:
        measured = figures(Path(folder))
    print(table(measured))
    return 0 if all(f.passed for f in measured) else 1


if __name__ == "__main__":
    sys.exit(main())
