"""Conversion benchmark: import/export throughput vs a copy of the same bytes, warm and cold, and peak RSS.

Everything is measured side by side in one run on the same disk (`--workdir`): copy, import and
export of the same bytes, several rounds in rotating order (medians), each step in a fresh
process that starts from the same state (see `run`; peak RSS is the process's own VmHWM). Warm:
the step's input is in the page cache; cold: the page cache is dropped before the step (root
only). Three baselines copy the same bytes: `cp` (shutil: in-kernel copy, the bytes never reach
user space, and nothing is flushed to disk), `cp+fsync` (the same, then every file fsynced: the
durability parquant's commit gives, since an output that is renamed into place before its bytes
are on disk is not committed) and `stream` (64 MiB through user space). Targets (performance
issue): import and export >= 0.8x `cp`, warm and cold; peak RSS <= 2 x largest tensor + 400 MB, and
flat in the number of layers. Model sizes: `--layers` (0 layers = 0.27 GB, 30 = 3.9 GB).
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
sys.path[:0] = [str(REPO / "pkg"), str(REPO / "bench")]

from figures import Figure, table  # noqa: E402

from parquant.hf import safetensors_header  # noqa: E402
from parquant.store.schema import TensorSpec  # noqa: E402

MB = 1_000_000
HIDDEN = 2048
VOCAB = 32768  # embedding 32768 x 2048 BF16 = 134 MB: the largest tensor at both sizes


# `cp`, then every copied file fsynced: the same durability as parquant's atomic commit.
DURABLE_COPY = """
import os, shutil, sys
shutil.copytree(sys.argv[1], sys.argv[2])
for name in os.listdir(sys.argv[2]):
    descriptor = os.open(os.path.join(sys.argv[2], name), os.O_RDONLY)
    os.fsync(descriptor)
    os.close(descriptor)
"""

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


def run(argv: list[str], warm: Path | None = None, cold: bool = False) -> Step:
    """Run one step in a fresh process, from the same starting state as every other step.

    Before each step: dirty pages are flushed; as root, the page cache is dropped and (warm) the
    step's input read back in, so every step starts with its input cached and the same free memory
    (when earlier steps had filled memory, the kernel reclaimed pages during whichever step came
    next and made it 2-5x slower: measured), or (cold) not; and the disk is left to go idle (it is
    mounted with `discard`).
    """
    os.sync()
    if can_drop_caches():
        Path("/proc/sys/vm/drop_caches").write_text("1")
    if warm is not None and not cold:
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


def can_drop_caches() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


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


def measure(workdir: Path, layers: int, rounds: int, cold: bool) -> dict[str, float]:
    """Copy, durable copy, stream-copy, import and export the same checkpoint, `rounds` times in
    rotating order; medians."""
    source = workdir / f"hf-{layers}"
    total, largest = make_checkpoint(source, layers)
    parquant = [sys.executable, str(REPO / "bench" / "peak_rss.py")]
    copy_code = "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2])"
    pq, back = workdir / "pq", workdir / "back"
    commands = {
        "copy": [sys.executable, "-c", copy_code, str(source), str(workdir / "copy")],
        "durable": [sys.executable, "-c", DURABLE_COPY, str(source), str(workdir / "durable")],
        "stream": [sys.executable, "-c", STREAM_COPY, str(source), str(workdir / "stream")],
        "import": [*parquant, "import", str(source), "-o", str(workdir / "pq-timed"), "--quiet"],
        "export": [*parquant, "export", str(pq), "-o", str(back), "--quiet"],
    }
    outputs = {"copy": "copy", "durable": "durable", "stream": "stream", "import": "pq-timed", "export": "back"}
    run([*parquant, "import", str(source), "-o", str(pq), "--quiet"])  # export's input
    steps: dict[str, list[Step]] = {name: [] for name in commands}
    for round_ in range(rounds):
        shift = round_ % len(commands)
        order = list(commands)[shift:] + list(commands)[:shift]  # no step always follows another
        for name in order:
            shutil.rmtree(workdir / outputs[name], ignore_errors=True)
            steps[name].append(run(commands[name], warm=pq if name == "export" else source, cold=cold))
    if not same_bytes(workdir / "back" / "model.safetensors", source / "model.safetensors"):
        raise SystemExit("round trip is not byte-identical")
    for name in (*outputs.values(), "pq", f"hf-{layers}"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    seconds = {k: statistics.median(s.seconds for s in v) for k, v in steps.items()}
    return {
        "bytes": total,
        "largest": largest,
        **{f"{name}_mbps": total / seconds[name] / MB for name in commands},
        "import_rss": max(s.peak_rss for s in steps["import"]),
        "export_rss": max(s.peak_rss for s in steps["export"]),
    }


def figures(work: Path, layers: tuple[int, ...] = (0, 6, 30), rounds: int = 3) -> list[Figure]:
    modes = ["warm", "cold"] if can_drop_caches() else ["warm"]
    results = {(n, mode): measure(work, n, rounds, mode == "cold") for n in layers for mode in modes}
    found = []
    for (_, mode), r in results.items():
        size = f"{r['bytes'] / 1e9:.2f} GB, {mode}"
        for stage in ("import", "export"):
            detail = (
                f"{r[stage + '_mbps']:.0f} MB/s; cp {r['copy_mbps']:.0f}, cp+fsync {r['durable_mbps']:.0f}, "
                f"stream {r['stream_mbps']:.0f} MB/s"
            )
            found.append(
                Figure(
                    "1 conversion",
                    f"{stage} / cp ({size})",
                    r[stage + "_mbps"] / r["copy_mbps"],
                    0.8,
                    True,
                    "x",
                    detail,
                )
            )
            found.append(
                Figure(
                    "1 conversion",
                    f"{stage} / cp+fsync ({size})",
                    r[stage + "_mbps"] / r["durable_mbps"],
                    0.8,
                    True,
                    "x",
                    "same durability as parquant's commit",
                )
            )
        budget = 2 * r["largest"] + 400 * MB
        worst = max(r["import_rss"], r["export_rss"])
        found.append(
            Figure(
                "1 conversion",
                f"peak RSS / budget ({size})",
                worst / budget,
                1.0,
                False,
                "x",
                f"{worst / MB:.0f} MB; budget 2 x largest tensor ({r['largest'] / MB:.0f} MB) + 400 MB",
            )
        )
    # Flat in depth: the deepest model against the shallowest one that has layers (a model of 0
    # layers holds only the embeddings, so it has no layer tensors in flight at all).
    deep = [results[(n, "warm")] for n in layers if n > 0]
    if len(deep) >= 2:
        shallow, deepest = deep[0], deep[-1]
        peak = [max(r["import_rss"], r["export_rss"]) for r in (shallow, deepest)]
        found.append(
            Figure(
                "1 conversion",
                f"peak RSS, {deepest['bytes'] / 1e9:.1f} GB / {shallow['bytes'] / 1e9:.1f} GB model (depth)",
                peak[1] / peak[0],
                1.2,
                False,
                "x",
                f"{peak[1] / MB:.0f} MB vs {peak[0] / MB:.0f} MB",
            )
        )
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 6, 30], help="model sizes (layers)")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions, each in another order; medians")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="parquant-bench-") as folder:
        measured = figures(Path(folder), tuple(args.layers), args.rounds)
    print(table(measured))
    return 0 if all(f.passed for f in measured) else 1


if __name__ == "__main__":
    sys.exit(main())
