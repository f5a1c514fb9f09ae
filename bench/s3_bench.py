"""S3 throughput: parquant import from and export to the loopback S3 server against s3fs's own get/put.

The same 0.54 GB checkpoint (2 layers of the conversion benchmark's model) is uploaded to moto's
S3 server on 127.0.0.1 (the server the tests use). Side by side, medians of 3 in rotating order:
  import:  `parquant import s3://.../hf -o LOCAL` against `S3FileSystem.get` of the same folder
  export:  `parquant export LOCAL -o s3://.../out` against `S3FileSystem.put` of the HF folder
with s3fs's default settings on the baseline side. Target >= 0.8x both ways. The concurrency knob
(`--storage-option max_concurrency=N`: s3fs's parallel multipart parts) is measured beside the
default, to show where the server, not parquant, is the limit. A loopback moto server is not S3:
its GB/s are printed as context only (Run:ai Model Streamer reports ~3 GB/s from same-region S3).
"""

from __future__ import annotations

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
from s3_server import LoopbackS3  # noqa: E402

ROUNDS = 3


def parquant(*args: str, endpoint: str, extra: tuple[str, ...] = ()) -> float:
    options = ["--storage-option", f"endpoint_url={endpoint}", *extra]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "parquant_cli", *args, *options, "--quiet"], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"parquant {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def s3fs_time(action: str, source: str, target: str, endpoint: str) -> float:
    code = (
        "import sys, s3fs; fs = s3fs.S3FileSystem(client_kwargs={'endpoint_url': sys.argv[1]}); "
        f"fs.{action}(sys.argv[2], sys.argv[3], recursive=True)"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, endpoint, source, target], check=True)
    return time.perf_counter() - started


def figures(work: Path) -> list[Figure]:
    total, _ = convert_bench.make_checkpoint(work / "hf", 2)
    parquant_local = work / "pq-local"
    subprocess.run(
        [sys.executable, "-m", "parquant_cli", "import", str(work / "hf"), "-o", str(parquant_local), "--quiet"],
        check=True,
        capture_output=True,
    )
    samples: dict[str, list[float]] = {k: [] for k in ("get", "import", "put", "export", "export-c8")}
    with LoopbackS3() as s3:
        s3.put_folder(work / "hf", "models/hf")
        endpoint = s3.endpoint
        for round_ in range(ROUNDS):
            steps = {
                "get": lambda: s3fs_time("get", "models/hf/", str(work / "got") + "/", endpoint),
                "import": lambda: parquant("import", "s3://models/hf", "-o", str(work / "imported"), endpoint=endpoint),
                "put": lambda r=round_: s3fs_time("put", str(work / "hf") + "/", f"models/put{r}/", endpoint),
                "export": lambda r=round_: parquant(
                    "export", str(parquant_local), "-o", f"s3://models/exported{r}", endpoint=endpoint
                ),
                "export-c8": lambda r=round_: parquant(
                    "export",
                    str(parquant_local),
                    "-o",
                    f"s3://models/exported-c8-{r}",
                    endpoint=endpoint,
                    extra=("--storage-option", "max_concurrency=8"),
                ),
            }
            order = list(steps)[round_ % len(steps) :] + list(steps)[: round_ % len(steps)]
            for name in order:
                shutil.rmtree(work / "got", ignore_errors=True)
                shutil.rmtree(work / "imported", ignore_errors=True)
                samples[name].append(steps[name]())
    seconds = {k: statistics.median(v) for k, v in samples.items()}

    def rate(name: str) -> str:
        return f"{total / seconds[name] / 1e9:.2f} GB/s"

    return [
        Figure(
            "4 S3",
            f"import from S3 / s3fs get ({total / 1e9:.2f} GB, loopback moto)",
            seconds["get"] / seconds["import"],
            0.8,
            True,
            "x",
            f"import {rate('import')}, get {rate('get')}",
        ),
        Figure(
            "4 S3",
            f"export to S3 / s3fs put ({total / 1e9:.2f} GB, loopback moto)",
            seconds["put"] / seconds["export"],
            0.8,
            True,
            "x",
            f"export {rate('export')}, put {rate('put')}; with max_concurrency=8: {rate('export-c8')}",
        ),
    ]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with tempfile.TemporaryDirectory(prefix="parquant-s3-") as folder:
        measured = figures(Path(folder))
    print(table(measured))
    sys.exit(0 if all(f.passed for f in measured) else 1)
