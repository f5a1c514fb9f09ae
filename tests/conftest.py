"""Shared fixtures: tiny HF checkpoints of several architectures, the CLI in-process, a real S3 server.

The S3 endpoint is moto's server mode in a subprocess on 127.0.0.1, reached through s3fs over real
HTTP exactly as production reaches AWS.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_MODEL = REPO / "examples" / "tiny-llama"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def tiny_config(arch: str) -> Any:
    from transformers import (
        DeepseekV3Config,
        GPT2Config,
        LlamaConfig,
        MistralConfig,
        MixtralConfig,
        Qwen2Config,
        Qwen3Config,
        Qwen3MoeConfig,
    )

    common = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    moe = {**common, "vocab_size": 4096}
    configs = {
        "llama": lambda: LlamaConfig(**common),
        "qwen3": lambda: Qwen3Config(**common, head_dim=16),
        "qwen2": lambda: Qwen2Config(**common),
        "mistral": lambda: MistralConfig(**common),
        "gpt2": lambda: GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128),
        # mixture-of-experts: 4 experts, 2 per token, in both layers (DeepSeek-V3: the first layer
        # dense); the embedded model's vocabulary, so its tokenizer and data drive them
        "qwen3_moe": lambda: Qwen3MoeConfig(
            **moe, head_dim=16, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2
        ),
        "mixtral": lambda: MixtralConfig(**moe, num_local_experts=4, num_experts_per_tok=2),
        "deepseek_v3": lambda: DeepseekV3Config(
            **moe,
            moe_intermediate_size=32,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=1,
            first_k_dense_replace=1,
            kv_lora_rank=16,
            q_lora_rank=32,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            n_group=1,
            topk_group=1,
        ),
    }
    return configs[arch]()


def make_checkpoint(
    folder: Path,
    arch: str = "llama",
    *,
    shard_size: str | None = None,
    dtype: str = "float32",
    seed: int = 0,
    fused: bool = False,
    vocab_size: int | None = None,
) -> Path:
    """A random-weight checkpoint saved by transformers itself, plus tokenizer and extra files.

    `fused=True` writes the parameters as transformers holds them in memory (an MoE layer's experts
    as one 3-D tensor each), the layout some checkpoints ship in."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch)
    if vocab_size is not None:  # e.g. the embedded tokenizer's 4096, for calibration with its data
        config.vocab_size = vocab_size
    model = AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype))
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    if fused:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(folder)
        state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        model.save_pretrained(folder, **kwargs)
    for name in TOKENIZER_FILES:
        if (EXAMPLE_MODEL / name).exists():
            shutil.copy(EXAMPLE_MODEL / name, folder / name)
    (folder / "README.md").write_text("# tiny test model\n\nnon-tensor file with unicode: é 漢字\n")
    return folder


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "hf")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `parquant ARGS...` in-process (so coverage sees it) and capture what it printed."""
    from parquant_cli.main import main

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback for the whole session."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@dataclass
class S3Env:
    endpoint: str
    bucket: str
    client: Any

    @property
    def options(self) -> dict[str, str]:
        return {"endpoint_url": self.endpoint}

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def keys(self, prefix: str = "") -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def multipart_uploads(self) -> list[Any]:
        return list(self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []))


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Env:
    """Fake credentials in the standard AWS variables and a fresh bucket on the loopback server."""
    import boto3

    from parquant.fs import s3_filesystem_class

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # Only loopback traffic: no instance-metadata lookups, no shared config from the machine.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    s3_filesystem_class().clear_instance_cache()
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3Env(s3_endpoint, bucket, client)


@contextlib.contextmanager
def embedded_model_in(root: Path, name: str, work_dir: bool = False) -> Iterator[Path]:
    """The embedded model imported as root/name, with parquant's cache (and, if asked, its scratch
    folders) under root for as long as the block runs."""
    from parquant.stages.hf_import import import_checkpoint

    env = {"PARQUANT_CACHE_DIR": root / "cache"} | ({"PARQUANT_WORK_DIR": root / "work"} if work_dir else {})
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        import_checkpoint(str(EXAMPLE_MODEL), str(root / name))
        yield root / name
    finally:
        for key in env:
            os.environ.pop(key, None)


def upload_folder(s3: S3Env, folder: Path, prefix: str) -> str:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.client.upload_file(str(path), s3.bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return s3.url(prefix)


# The fast tier (`make test-fast`, under two minutes on two cores) is every test not marked slow.
# Slow are: tests that drive the whole CLI or a real S3 server (the `cli`, `s3` fixtures), and the
# modules below that build models, run AngelSlim, the docs or the benchmarks; a test may also carry
# `@pytest.mark.slow` itself.
SLOW_FIXTURES = frozenset({"cli", "s3", "s3_endpoint"})
SLOW_MODULES = frozenset(
    {
        "test_angelslim_methods",
        "test_bench",
        "test_compare",
        "test_convert_fanout",
        "test_convert_resume",
        "test_convert_signals",
        "test_doc_examples",
        "test_docs",
        "test_examples",
        "test_method_digests",
        "test_moe",
        "test_quantize",
        "test_quantize_fanout",
        "test_quantize_recovery",
        "test_report",
        "test_validate",
        "test_validate_activations",
        "test_validate_lossless",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SLOW_FIXTURES or (
            item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES
        ):
            item.add_marker(pytest.mark.slow)
