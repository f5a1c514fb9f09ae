"""Conversion benchmark: import/export throughput vs. a plain copy of the same bytes, and peak RSS.

Everything is measured side by side in one run on the same disk (`--workdir`): copy, import and
export of the same bytes, several rounds in rotating order (medians), each step in a fresh
process that starts from the same state (see `run`; peak RSS is the process's own VmHWM). Two
model sizes share the same largest tensor, which shows whether memory grows with the number of
layers. Two baselines copy the same bytes: `stream` (read 64 MiB into a buffer, write it out: a
plain copy through user space, the least any converter that checks the bytes must do) and `cp`
(shutil: in-kernel sendfile, the bytes never reach user space). Prints ratios against both;
exits 1 if a target from the spine issue is missed:
  import and export throughput >= 0.5x the streaming copy (the ratio to `cp` is printed too);
  peak RSS <= 2 x largest tensor + 400 MB, and not growing with the number of layers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "pkg"))

from parquant.hf import safetensors_header  # noqa: E402
from parquant.store.schema import TensorSpec  # noqa: E402

MB = 1_000_000
HIDDEN = 2048
VOCAB = 32768  # embedding 32768 x 2048 BF16 = 134 MB: the largest tensor at both sizes


# A user-space copy: read 64 MiB into a buffer, write it out. Any converter must at least do this;
# `cp` (shutil/sendfile) copies inside the kernel and never touches user memory.
STREAM_COPY = """
import os, sys
os.makedirs(sys.argv[2])
buffer = memoryview(bytearray(64 * 2**20))
for name in os.listdir(sys.argv[1]):
    with open(os.path.join(sys.argv[1], name), "rb", buffering=0) as src, \\
         open(os.path.join(sys.argv[2], name), "wb", buffering=0) as dst:
        while count := src.readinto(buffer):
            dst.write(buffer[:count])
"""


@dataclass
class Step:
    seconds: float
    peak_rss: int


def layer_specs(layers: int) -> list[TensorSpec]:
    specs = [
        TensorSpec("model.embed_tokens.weight", "BF16", (VOCAB, HIDDEN)),
        TensorSpec("lm_head.weight", "BF16", (VOCAB, HIDDEN)),
    ]
    for i in range(layers):
        prefix = f"model.layers.{i}"
        specs += [
            TensorSpec(f"{prefix}.self_attn.q_proj.weight", "BF16", (HIDDEN, HIDDEN)),
            TensorSpec(f"{prefix}.self_attn.k_proj.weight", "BF16", (HIDDEN // 4, HIDDEN)),
            TensorSpec(f"{prefix}.self_attn.v_proj.weight", "BF16", (HIDDEN // 4, HIDDEN)),
            TensorSpec(f"{prefix}.self_attn.o_proj.weight", "BF16", (HIDDEN, HIDDEN)),
            TensorSpec(f"{prefix}.mlp.gate_proj.weight", "BF16", (4 * HIDDEN, HIDDEN)),
            TensorSpec(f"{prefix}.mlp.up_proj.weight", "BF16", (4 * HIDDEN, HIDDEN)),
            TensorSpec(f"{prefix}.mlp.down_proj.weight", "BF16", (HIDDEN, 4 * HIDDEN)),
            TensorSpec(f"{prefix}.input_layernorm.weight", "BF16", (HIDDEN,)),
        ]
    return specs


def make_checkpoint(folder: Path, layers: int) -> tuple[int, int]:
    """Write a BF16 checkpoint of random normal weights; returns (total bytes, largest tensor bytes)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    block = (rng.standard_normal(32 * 2**20, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
    specs = layer_specs(layers)
    with open(folder / "model.safetensors", "wb") as handle:
        handle.write(safetensors_header(specs, {"format": "pt"}))
        for spec in specs:
            remaining = spec.nbytes
            while remaining:
                piece = block[: min(remaining, len(block))]
                handle.write(piece)
                remaining -= len(piece)
    (folder / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}\n')
    return sum(s.nbytes for s in specs), max(s.nbytes for s in specs)


def run(argv: list[str], warm: Path | None = None) -> Step:
    """Run one step in a fresh process, from the same starting state as every other step.

    Before each step: dirty pages are flushed; as root, the page cache is dropped and the step's
    input read back in, so every step starts with its input cached and the same free memory (when
    earlier steps had filled memory, the kernel reclaimed pages during whichever step came next and
    made it 2-5x slower: measured); and the disk is left to go idle (it is mounted with `discard`).
    """
    os.sync()
    drop = Path("/proc/sys/vm/drop_caches")
    if os.access(drop, os.W_OK):
        drop.write_text("1")
    if warm is not None:
        for path in sorted(warm.rglob("*")):
            if path.is_file():
                with open(path, "rb", buffering=0) as handle:
                    while handle.read(2**24):
                        pass
    wait_for_idle_disk()
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"step failed: {' '.join(argv)}\n{done.stderr}")
    peaks = [int(line.split("=")[1]) for line in done.stderr.splitlines() if line.startswith("peak_rss_bytes=")]
    return Step(seconds, peaks[-1] if peaks else 0)


def wait_for_idle_disk(quiet_seconds: float = 0.5, limit: float = 15.0) -> None:
    """Until no request is in flight on any disk for `quiet_seconds` (or `limit` passes); 1 s where
    the kernel does not say."""
    stats = [p for p in Path("/sys/block").glob("*/inflight") if not p.parent.name.startswith(("loop", "zram"))]
    if not stats:
        time.sleep(1.0)
        return
    deadline, quiet_since = time.monotonic() + limit, time.monotonic()
    while time.monotonic() < deadline:
        if any(p.read_text().split() != ["0", "0"] for p in stats):
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_seconds:
            return
        time.sleep(0.05)


def same_bytes(left: Path, right: Path) -> bool:
    with open(left, "rb") as a, open(right, "rb") as b:
        while True:
            x, y = a.read(2**24), b.read(2**24)
            if x != y:
                return False
            if not x:
                return True


def measure(workdir: Path, layers: int, rounds: int) -> dict[str, float]:
    """Copy, stream-copy, import and export the same checkpoint, `rounds` times in rotating order; medians."""
    source = workdir / f"hf-{layers}"
    total, largest = make_checkpoint(source, layers)
    parquant = [sys.executable, str(REPO / "bench" / "peak_rss.py")]
    copy_code = "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2])"
    pq, back = workdir / "pq", workdir / "back"
    commands = {
        "copy": [sys.executable, "-c", copy_code, str(source), str(workdir / "copy")],
        "stream": [sys.executable, "-c", STREAM_COPY, str(source), str(workdir / "stream")],
        "import": [*parquant, "import", str(source), "-o", str(workdir / "pq-timed"), "--quiet"],
        "export": [*parquant, "export", str(pq), "-o", str(back), "--quiet"],
    }
    outputs = {"copy": "copy", "stream": "stream", "import": "pq-timed", "export": "back"}
    run([*parquant, "import", str(source), "-o", str(pq), "--quiet"])  # export's input
    steps: dict[str, list[Step]] = {name: [] for name in commands}
    for round_ in range(rounds):
        order = list(commands)[round_ % 4 :] + list(commands)[: round_ % 4]  # no step always follows another
        for name in order:
            shutil.rmtree(workdir / outputs[name], ignore_errors=True)
            steps[name].append(run(commands[name], warm=pq if name == "export" else source))
    if not same_bytes(workdir / "back" / "model.safetensors", source / "model.safetensors"):
        raise SystemExit("round trip is not byte-identical")
    for name in (*outputs.values(), "pq", f"hf-{layers}"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    seconds = {k: statistics.median(s.seconds for s in v) for k, v in steps.items()}
    return {
        "bytes": total,
        "largest": largest,
        "copy_mbps": total / seconds["copy"] / MB,
        "stream_mbps": total / seconds["stream"] / MB,
        "import_mbps": total / seconds["import"] / MB,
        "export_mbps": total / seconds["export"] / MB,
        "import_rss": max(s.peak_rss for s in steps["import"]),
        "export_rss": max(s.peak_rss for s in steps["export"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--layers", type=int, nargs=2, default=[2, 6], help="small and large model")
    parser.add_argument("--rounds", type=int, default=4, help="repetitions, each in another order; medians")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = f"{REPO / 'pkg'}:{REPO / 'cmd'}"
    results = {}
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="parquant-bench-") as folder:
        for layers in args.layers:
            results[layers] = measure(Path(folder), layers, args.rounds)
    ok = True
    print(
        f"{'layers':>6} {'GB':>5} {'cp MB/s':>8} {'stream':>7} {'import':>7} {'export':>7} {'imp/cp':>7} "
        f"{'exp/cp':>7} {'imp/stream':>10} {'exp/stream':>10} {'RSS imp MB':>10} {'RSS exp MB':>10} {'RSS/largest':>11}"
    )
    for layers, r in results.items():
        budget = 2 * r["largest"] + 400 * MB
        worst_rss = max(r["import_rss"], r["export_rss"])
        vs_stream = (r["import_mbps"] / r["stream_mbps"], r["export_mbps"] / r["stream_mbps"])
        print(
            f"{layers:>6} {r['bytes'] / 1e9:>5.2f} {r['copy_mbps']:>8.0f} {r['stream_mbps']:>7.0f} "
            f"{r['import_mbps']:>7.0f} {r['export_mbps']:>7.0f} {r['import_mbps'] / r['copy_mbps']:>7.2f} "
            f"{r['export_mbps'] / r['copy_mbps']:>7.2f} {vs_stream[0]:>10.2f} {vs_stream[1]:>10.2f} "
            f"{r['import_rss'] / MB:>10.0f} {r['export_rss'] / MB:>10.0f} {worst_rss / r['largest']:>11.2f}"
        )
        ok &= min(vs_stream) >= 0.5 and worst_rss <= budget
    small, large = (results[n] for n in args.layers)
    growth = max(large["import_rss"], large["export_rss"]) / max(small["import_rss"], small["export_rss"])
    print(f"peak RSS, large/small model ({large['bytes'] / small['bytes']:.1f}x the bytes): {growth:.2f}x")
    ok &= growth < 1.2
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
