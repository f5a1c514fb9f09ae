"""`parquant quantize` on the embedded model: every method, through the real AngelSlim package on CPU."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from parquant.quant import methods
from parquant.quant.angelslim import angelslim_config
from parquant.quant.angelslim_compat import host_as_cuda, load_angelslim
from parquant.quant.calibration import prepare_calibration
from parquant.quant.config import QuantizationConfig, load_config
from parquant.quant.dequant import dequantized_state_dict
from parquant.stages.hf_export import export_checkpoint
from parquant.stages.hf_import import import_checkpoint
from parquant.stages.quantize import quantize
from parquant.weights import WeightLoader

from ..conftest import EXAMPLE_MODEL, CliResult, S3Env, embedded_model_in, make_checkpoint
from ..helpers import SMALL_CALIBRATION

Cli = Callable[..., CliResult]
CALIBRATION = EXAMPLE_MODEL.parent / "data" / "calibration.jsonl"
EVAL_TEXT = EXAMPLE_MODEL.parent / "data" / "eval.txt"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_model_in(tmp_path_factory.mktemp("quantize"), "tiny") as model:
        yield str(model)


@pytest.fixture(scope="module")
def eval_ids() -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(EXAMPLE_MODEL)
    return tokenizer(EVAL_TEXT.read_text()[:6000], return_tensors="pt").input_ids[:, :256]


def logits_of(model_url: str, ids: torch.Tensor) -> torch.Tensor:
    """Logits of any model parquant writes (transformers for compressed-tensors, dequantized int4)."""
    with WeightLoader(model_url) as loader:
        model = loader.build_model()
    with torch.no_grad():
        return model(ids).logits.float()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


@pytest.mark.parametrize(
    ("method", "floor"), [("int8-weight", 0.9995), ("int8-dynamic", 0.998), ("fp8-dynamic", 0.995)]
)
def test_builtin_ptq_methods_load_in_transformers_and_keep_logits(
    tiny: str, tmp_path: Path, eval_ids: torch.Tensor, method: str, floor: float
) -> None:
    config = load_config(flags={"method": method, "backend": "ptq"}, environ={})
    result = quantize(tiny, str(tmp_path / method), config)
    assert result.details["backend"] == "ptq" and result.details["quantized_layers"] == 28
    with WeightLoader(str(tmp_path / method)) as loader:
        assert loader.spec("model.layers.0.mlp.down_proj.weight").dtype == ("F8_E4M3" if "fp8" in method else "I8")
        assert loader.spec("model.layers.0.mlp.down_proj.weight_scale").shape == (256, 1)
        assert loader.spec("model.embed_tokens.weight").dtype == "BF16"
        assert loader.reader.manifest.created_by.backend == "ptq"
    similarity = cosine(logits_of(str(tmp_path / method), eval_ids), logits_of(tiny, eval_ids))
    print(f"{method}: logits cosine mean {float(similarity.mean()):.5f} worst {float(similarity.min()):.5f}")
    assert float(similarity.mean()) >= floor


ANGELSLIM_EXPECTED = {
    "fp8-static": {"weight": "F8_E4M3", "weight_scale": "F32", "input_scale": "BF16"},
    "fp8-dynamic": {"weight": "F8_E4M3", "weight_scale": "F32"},
    "int8-dynamic": {"weight": "I8", "weight_scale": "BF16"},
    "int4-gptq": {"qweight": "I32", "qzeros": "I32", "scales": "BF16", "g_idx": "I32"},
    "int4-awq": {"qweight": "I32", "qzeros": "I32", "scales": "F16"},
}
ANGELSLIM_FLOORS = {"fp8-static": 0.99, "fp8-dynamic": 0.99, "int8-dynamic": 0.995, "int4-gptq": 0.9, "int4-awq": 0.9}


def direct_angelslim_run(config: QuantizationConfig, model_dir: Path, out: Path, model_type: str = "llama") -> Path:
    """AngelSlim's own Engine sequence (as its tools/run.py), on the same folder and calibration file."""
    engine_module = load_angelslim()
    from angelslim.utils.config_parser import SlimConfigParser
    from transformers import AutoTokenizer

    calibration = None
    if config.needs_calibration:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        import hashlib

        calibration = prepare_calibration(
            config.calibration, tokenizer, hashlib.sha256((model_dir / "tokenizer.json").read_bytes()).hexdigest()
        ).path
    recipe = methods.get_method(config.method).recipe(methods.ANGELSLIM, config.group_size)
    slim = angelslim_config(config, recipe, model_dir, calibration, out, model_type, "cpu")
    parsed = SlimConfigParser()._get_configs(slim)
    engine = engine_module.Engine()
    m = parsed.model_config
    engine.prepare_model(
        model_name=m.name,
        model_path=m.model_path,
        torch_dtype=m.torch_dtype,
        device_map=m.device_map,
        trust_remote_code=False,
    )
    c = parsed.compression_config
    if c.need_dataset:
        d = parsed.dataset_config
        engine.prepare_data(
            data_path=d.data_path,
            data_type=d.name,
            max_length=d.max_seq_length,
            batch_size=1,
            num_samples=d.num_samples,
            shuffle=False,
            model_name=m.name,
            quantization_config=c.quantization,
            dtype=engine.slim_model.model.dtype,
        )
    engine.prepare_compressor(compress_name=c.name, compress_config=c, global_config=parsed.global_config)
    with host_as_cuda():
        engine.run()
        engine.convert()
    engine.save(str(out), parsed)
    return out


@pytest.mark.parametrize("method", list(ANGELSLIM_EXPECTED))
def test_angelslim_methods_match_a_direct_angelslim_run_bit_for_bit(
    tiny: str, tmp_path: Path, eval_ids: torch.Tensor, method: str
) -> None:
    torch.manual_seed(0)
    config = load_config(flags={"method": method, "backend": "angelslim", **SMALL_CALIBRATION}, environ={})
    result = quantize(tiny, str(tmp_path / "pq"), config)
    assert result.details["backend"] == "angelslim" and result.details["fallbacks"] == []
    export_checkpoint(str(tmp_path / "pq"), str(tmp_path / "ours"))
    ours = load_file(str(tmp_path / "ours" / "model.safetensors"))
    from parquant.fs import resolve
    from parquant.hf_folders import cached_hf_folder
    from parquant.store.reader import ModelReader

    with ModelReader(resolve(tiny)) as reader:
        model_dir = cached_hf_folder(reader)
    torch.manual_seed(0)
    theirs_dir = direct_angelslim_run(config, model_dir, tmp_path / "direct")
    theirs = {}
    for path in theirs_dir.glob("*.safetensors"):
        theirs.update(load_file(str(path)))
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert torch.equal(ours[name].view(torch.uint8), tensor.view(torch.uint8)), name
    with WeightLoader(str(tmp_path / "pq")) as loader:
        for suffix, dtype in ANGELSLIM_EXPECTED[method].items():
            assert loader.spec(f"model.layers.2.mlp.up_proj.{suffix}").dtype == dtype, suffix
        assert loader.reader.manifest.created_by.backend == "angelslim"
    similarity = cosine(logits_of(str(tmp_path / "pq"), eval_ids), logits_of(tiny, eval_ids))
    print(f"{method}: logits cosine mean {float(similarity.mean()):.4f} worst {float(similarity.min()):.4f}")
    assert float(similarity.mean()) >= ANGELSLIM_FLOORS[method]


def test_awq_on_cpu_does_not_destroy_the_weights(tiny: str, tmp_path: Path) -> None:
    """AngelSlim's AWQ search aliases its weight backup on CPU (weights grow ~850x, exit 0) unless adapted."""
    config = load_config(flags={"method": "int4-awq", "backend": "angelslim", **SMALL_CALIBRATION}, environ={})
    quantize(tiny, str(tmp_path / "awq"), config)
    with WeightLoader(tiny) as original, WeightLoader(str(tmp_path / "awq")) as quantized:
        tensors = {n: quantized.load(n) for n in quantized.names()}
        state = dequantized_state_dict(tensors, quantized.config()["quantization_config"], torch.float32)
        for name in ("model.layers.0.mlp.down_proj.weight", "model.layers.3.self_attn.q_proj.weight"):
            ratio = float(state[name].norm() / original.load(name).float().norm())
            assert 0.5 < ratio < 2.0, f"{name} norm ratio {ratio}"


def test_fallback_when_angelslim_is_hidden(
    tiny: str, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "angelslim", None)  # `import angelslim` now fails, as if not installed
    result = cli(
        "quantize", tiny, "-o", tmp_path / "fallback", "--method", "int4-gptq", "--calibration-data", CALIBRATION
    )
    assert result.code == 0, result.err
    assert (
        "angelslim is not installed: falling back to the built-in PTQ backend with int4-rtn "
        "(method int4-gptq -> int4-rtn, backend ptq)" in result.err
    )
    manifest = json.loads((tmp_path / "fallback" / "parquant.json").read_text())
    assert manifest["created_by"]["backend"] == "ptq"
    assert manifest["created_by"]["fallbacks"] == ["angelslim is not installed -> ptq int4-rtn"]
    refused = cli(
        "quantize",
        tiny,
        "-o",
        tmp_path / "refused",
        "--backend",
        "angelslim",
        "--method",
        "fp8-dynamic",
        "--no-fallback",
    )
    assert refused.code == 69
    assert "pip install -r requirements-angelslim.txt" in refused.err
    assert not (tmp_path / "refused").exists()


def test_unsupported_architecture(tmp_path: Path, cli: Cli) -> None:
    source = make_checkpoint(tmp_path / "hf", "gpt2")
    import_checkpoint(str(source), str(tmp_path / "gpt2"))
    auto = cli(
        "quantize",
        tmp_path / "gpt2",
        "-o",
        tmp_path / "q",
        "--method",
        "fp8-dynamic",
        "--backend",
        "angelslim",
        "--no-fallback",
    )
    assert auto.code == 69 and "does not support architecture 'gpt2'" in auto.err
    ptq = cli("quantize", tmp_path / "gpt2", "-o", tmp_path / "q2")
    assert ptq.code == 69 and "no nn.Linear layers" in ptq.err
    mystery = json.loads((source / "config.json").read_text()) | {"model_type": "mystery"}
    (source / "config.json").write_text(json.dumps(mystery))
    import_checkpoint(str(source), str(tmp_path / "mystery"))
    unknown = cli("quantize", tmp_path / "mystery", "-o", tmp_path / "q3")
    assert unknown.code == 69 and "unsupported architecture 'mystery'" in unknown.err


def test_bad_input(tiny: str, tmp_path: Path, cli: Cli, s3: S3Env) -> None:
    unknown = cli("quantize", tiny, "-o", tmp_path / "x", "--method", "int2")
    assert unknown.code == 64 and "method 'int2'" in unknown.err
    no_data = cli("quantize", tiny, "-o", tmp_path / "x", "--method", "int4-gptq")
    assert no_data.code == 64 and "needs calibration data" in no_data.err
    (tmp_path / "empty.jsonl").write_text("")
    empty = cli(
        "quantize", tiny, "-o", tmp_path / "x", "--method", "fp8-static", "--calibration-data", tmp_path / "empty.jsonl"
    )
    assert empty.code == 65 and "has no samples" in empty.err
    (tmp_path / "garbled.jsonl").write_text('{"text": "fine"}\n{oops\n')
    garbled = cli(
        "quantize",
        tiny,
        "-o",
        tmp_path / "x",
        "--method",
        "fp8-static",
        "--calibration-data",
        tmp_path / "garbled.jsonl",
        "--no-fallback",
    )
    assert garbled.code == 65 and "line 2 is not valid JSON" in garbled.err
    bucket = cli(
        "quantize",
        tiny,
        "-o",
        tmp_path / "x",
        "--method",
        "fp8-static",
        "--calibration-data",
        "s3://no-such-bucket-parquant/c.jsonl",
        "--storage-option",
        f"endpoint_url={s3.endpoint}",
    )
    assert bucket.code == 66 and "not found" in bucket.err
    assert cli("quantize", tiny, "-o", tmp_path / "int8").code == 0
    again = cli("quantize", tmp_path / "int8", "-o", tmp_path / "twice")
    assert again.code == 65 and "already quantized" in again.err
    assert not (tmp_path / "x").exists() and not (tmp_path / "twice").exists()


def test_nan_weights_are_refused(tmp_path: Path, cli: Cli) -> None:
    source = make_checkpoint(tmp_path / "hf", "llama")
    tensors = load_file(str(source / "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight"][3, 4] = float("nan")
    from safetensors.torch import save_file

    save_file(tensors, str(source / "model.safetensors"), metadata={"format": "pt"})
    import_checkpoint(str(source), str(tmp_path / "nan"))
    result = cli("quantize", tmp_path / "nan", "-o", tmp_path / "q")
    assert result.code == 65 and "model.layers.1.mlp.up_proj.weight contains NaN/Inf" in result.err
    assert not (tmp_path / "q").exists() and not list(tmp_path.glob(".q.*"))


def test_dry_run_plans_and_writes_nothing(tiny: str, tmp_path: Path, cli: Cli) -> None:
    result = cli(
        "quantize",
        tiny,
        "-o",
        tmp_path / "plan",
        "--method",
        "fp8-static",
        "--calibration-data",
        CALIBRATION,
        "--dry-run",
    )
    assert result.code == 0
    plan = json.loads(result.out)["details"]
    assert plan["plan"]["backend"] == "angelslim" and "CPU adapter" in plan["plan"]["reasons"][0]
    assert plan["estimate"]["peak_memory_gb"] > 0 and "estimate:" in result.err
    assert not (tmp_path / "plan").exists()


def test_cuda_requested_without_gpu_falls_back_to_cpu(tiny: str, tmp_path: Path, cli: Cli) -> None:
    result = cli(
        "quantize", tiny, "-o", tmp_path / "q", "--device", "cuda", "--method", "int8-dynamic", "--backend", "ptq"
    )
    assert result.code == 0
    manifest = json.loads((tmp_path / "q" / "parquant.json").read_text())
    assert manifest["created_by"]["fallbacks"] == ["cuda requested but not available -> cpu"]
    refused = cli("quantize", tiny, "-o", tmp_path / "r", "--device", "cuda", "--no-fallback")
    assert refused.code == 69 and "no CUDA GPU" in refused.err


def test_environment_overrides_and_skip_when_done(
    tiny: str, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARQUANT_METHOD", "fp8-dynamic")
    monkeypatch.setenv("PARQUANT_BACKEND", "ptq")
    first = cli("quantize", tiny, "-o", tmp_path / "q")
    assert first.code == 0 and json.loads(first.out)["details"]["method"] == "fp8-dynamic"
    second = cli("quantize", tiny, "-o", tmp_path / "q")
    assert second.code == 0 and json.loads(second.out)["skipped"] is True
    other = cli("quantize", tiny, "-o", tmp_path / "q", "--method", "int8-weight")
    assert other.code == 73


def test_quantize_from_and_to_s3(tiny: str, s3: S3Env, cli: Cli) -> None:
    option = ["--storage-option", f"endpoint_url={s3.endpoint}"]
    assert cli("export", tiny, "-o", s3.url("hf"), *option).code == 0
    assert cli("import", s3.url("hf"), "-o", s3.url("tiny"), *option).code == 0
    result = cli(
        "quantize",
        s3.url("tiny"),
        "-o",
        s3.url("tiny-fp8"),
        "--method",
        "fp8-static",
        "--calibration-data",
        CALIBRATION,
        "--num-samples",
        "4",
        "--seq-len",
        "64",
        *option,
    )
    assert result.code == 0, result.err
    assert "tiny-fp8/parquant.json" in s3.keys("tiny-fp8/")
    ptq = cli("quantize", s3.url("tiny"), "-o", s3.url("tiny-int8"), *option)
    assert ptq.code == 0 and "tiny-int8/parquant.json" in s3.keys("tiny-int8/")


def test_killed_ptq_quantize_resumes(tmp_path: Path) -> None:
    import subprocess

    from ..conftest import REPO
    from .test_convert_s3 import _kill_when

    folder = tmp_path / "hf"
    folder.mkdir()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=512,
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=8,
        )
    ).save_pretrained(folder)
    import_checkpoint(str(folder), str(tmp_path / "big"))
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'pkg'}:{REPO / 'cmd'}"}
    command = [
        sys.executable,
        "-m",
        "parquant_cli",
        "quantize",
        str(tmp_path / "big"),
        "-o",
        str(tmp_path / "q"),
        "--shard-size",
        "256KiB",
        "--log-format",
        "json",
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _kill_when(proc, lambda: (tmp_path / ".q.parquant-partial" / ".parquant-progress.json").exists())
    assert not (tmp_path / "q").exists()
    rerun = subprocess.run(command, env=env, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert b"resuming:" in rerun.stderr
    with WeightLoader(str(tmp_path / "q")) as loader:
        assert loader.spec("model.layers.7.mlp.down_proj.weight").dtype == "I8"
        assert len(loader.reader.manifest.shards) > 10


def test_calibration_works_without_a_pad_token(tmp_path: Path, cli: Cli) -> None:
    """Seen on a GPU host: a tokenizer without pad token made AngelSlim's calibration fail."""
    import shutil

    shutil.copytree(EXAMPLE_MODEL, tmp_path / "hf")
    config_path = tmp_path / "hf" / "tokenizer_config.json"
    settings = json.loads(config_path.read_text())
    settings.pop("pad_token", None)
    config_path.write_text(json.dumps(settings))
    model_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    model_config.pop("pad_token_id", None)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(model_config))
    import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "pq"))
    result = cli(
        "quantize",
        tmp_path / "pq",
        "-o",
        tmp_path / "fp8",
        "--method",
        "fp8-static",
        "--backend",
        "angelslim",
        "--no-fallback",
        "--calibration-data",
        CALIBRATION,
        "--num-samples",
        "4",
        "--seq-len",
        "64",
        "--log-format",
        "text",
    )
    assert result.code == 0, result.err
    assert "no pad token" in result.err
