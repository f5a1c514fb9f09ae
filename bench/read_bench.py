"""Tensor reads: `WeightLoader` against safetensors' `safe_open`, and bytes fetched from S3 for one tensor.

One model of 1,601 tensors (200 layers x 8 small tensors, like a 70B model's tensor count, plus a
64 MiB one) is written as safetensors and imported. In one process, with every library already
imported, side by side (medians):
  open:   `WeightLoader(url)` + `names()` against `safe_open(file)` + `keys()`       target <= 2x
  read:   `WeightLoader.load(name)` against `get_tensor(name)` + a copy (`clone`), for a 8 KB
          tensor and the 64 MiB one (opened handles, page cache warm)                target <= 1.2x
  S3:     bytes the loopback S3 server sends for one `load` of the 8 KB tensor after open
          (counted by a TCP proxy), against the tensor's size + 64 KB               target <= 1x
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "pkg"), str(REPO / "bench"), str(REPO)]

import numpy as np  # noqa: E402
from figures import Figure, median_seconds, table  # noqa: E402

from parquant.hf import safetensors_header  # noqa: E402
from parquant.store.schema import TensorSpec  # noqa: E402

LAYERS = 200
SMALL = "model.layers.100.self_attn.q_proj.weight"  # 64 x 64 BF16 = 8 KB
BIG = "lm_head.weight"  # 4096 x 8192 BF16 = 64 MiB


def make_model(folder: Path) -> None:
    folder.mkdir(parents=True)
    specs = [TensorSpec(BIG, "BF16", (4096, 8192))]
    for layer in range(LAYERS):
        for part in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "norm"):
            module = "self_attn" if part.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            specs.append(TensorSpec(f"model.layers.{layer}.{module}.{part}.weight", "BF16", (64, 64)))
    rng = np.random.default_rng(0)
    with open(folder / "model.safetensors", "wb") as handle:
        handle.write(safetensors_header(specs, {"format": "pt"}))
        for spec in specs:  # bf16 = the top half of float32 normal values
            values = rng.standard_normal(spec.nbytes // 2, dtype=np.float32).view(np.uint32) >> 16
            handle.write(values.astype(np.uint16).tobytes())
    (folder / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}\n')


def parquant(*args: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "parquant_cli", *args, "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{REPO / 'pkg'}:{REPO / 'cmd'}", **(env or {})},
    )
    if done.returncode != 0:
        raise SystemExit(f"parquant {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def local_figures(work: Path) -> list[Figure]:
    from safetensors import safe_open

    from parquant.weights import WeightLoader

    make_model(work / "hf")
    parquant("import", str(work / "hf"), "-o", str(work / "pq"))
    file, url = str(work / "hf" / "model.safetensors"), str(work / "pq")

    def open_safetensors() -> None:
        with safe_open(file, "pt") as handle:
            list(handle.keys())

    def open_parquant() -> None:
        with WeightLoader(url) as loader:
            loader.names()

    figures = []
    st_open, _, _ = median_seconds(open_safetensors, 30)
    pq_open, _, _ = median_seconds(open_parquant, 30)
    figures.append(
        Figure(
            "3 tensor reads",
            f"WeightLoader open / safe_open ({LAYERS * 8 + 1} tensors)",
            pq_open / st_open,
            2.0,
            at_least=False,
            detail=f"{pq_open * 1000:.2f} ms vs {st_open * 1000:.2f} ms",
        )
    )
    with safe_open(file, "pt") as handle, WeightLoader(url) as loader:
        for name, label, repeats in ((SMALL, "8 KB", 200), (BIG, "64 MiB", 7)):
            assert bytes(loader.load(name).view(-1).view(dtype=__import__("torch").uint8).numpy()) == bytes(
                handle.get_tensor(name).view(-1).view(dtype=__import__("torch").uint8).numpy()
            )
            st_read, _, _ = median_seconds(lambda n=name: handle.get_tensor(n).clone(), repeats)
            pq_read, _, _ = median_seconds(lambda n=name: loader.load(n), repeats)
            figures.append(
                Figure(
                    "3 tensor reads",
                    f"WeightLoader.load / get_tensor+clone ({label})",
                    pq_read / st_read,
                    1.2,
                    at_least=False,
                    detail=f"{pq_read * 1e6:.0f} us vs {st_read * 1e6:.0f} us",
                )
            )
    figures.append(s3_figure(work))
    return figures


def s3_figure(work: Path) -> Figure:
    from s3_server import LoopbackS3

    from parquant.fs import resolve, s3_filesystem_class
    from parquant.store.reader import ModelReader
    from tests.byte_counting_proxy import ByteCountingProxy

    with LoopbackS3() as s3:
        s3.put_folder(work / "pq", "models/pq")
        upstream = urlparse(s3.endpoint)
        with ByteCountingProxy((upstream.hostname or "", upstream.port or 80)) as proxy:
            s3_filesystem_class().clear_instance_cache()
            location = resolve("s3://models/pq", {"endpoint_url": f"http://127.0.0.1:{proxy.port}"})
            with ModelReader(location) as reader:
                proxy.reset()
                data = reader.read_tensor(SMALL)
                fetched = proxy.received
    allowed = len(data) + 64 * 1024
    return Figure(
        "3 tensor reads",
        "S3 bytes fetched for one 8 KB tensor / (size + 64 KB)",
        fetched / allowed,
        1.0,
        at_least=False,
        detail=f"{fetched} bytes fetched",
    )


def figures(work: Path) -> list[Figure]:
    return local_figures(work)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="parquant-read-") as folder:
        measured = figures(Path(folder))
    print(table(measured))
    sys.exit(0 if all(f.passed for f in measured) else 1)
