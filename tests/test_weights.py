"""WeightLoader: lazy tensors equal the originals; the built model gives the original logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from parquant.errors import UnavailableError
from parquant.fs import resolve
from parquant.stages.hf_import import import_checkpoint
from parquant.weights import WeightLoader

from .conftest import EXAMPLE_MODEL, make_checkpoint
from .helpers import checkpoint_tensors, logits


def test_loads_tensors_lazily_and_builds_the_model(tmp_path: Path) -> None:
    source = make_checkpoint(tmp_path / "hf", "qwen3", dtype="bfloat16")
    import_checkpoint(str(source), str(tmp_path / "pq"))
    originals = checkpoint_tensors(source)
    with WeightLoader(str(tmp_path / "pq")) as loader:
        state = loader.state_dict()
        assert len(state) == len(originals) and set(state) == set(originals)
        for name, tensor in originals.items():
            assert torch.equal(state[name], tensor) and state[name].dtype == torch.bfloat16
        with pytest.raises(KeyError):
            state["nope"]
        assert not loader.quantization().quantized
        model = loader.build_model()
    with torch.no_grad():
        built = model(torch.arange(1, 25).unsqueeze(0)).logits
    assert torch.equal(built, logits(source))


def test_unknown_architecture_needs_remote_code(tmp_path: Path) -> None:
    source = make_checkpoint(tmp_path / "hf", "llama")
    config = (source / "config.json").read_text().replace('"model_type": "llama"', '"model_type": "mystery"')
    (source / "config.json").write_text(config)
    import_checkpoint(str(source), str(tmp_path / "pq"))
    with WeightLoader(str(tmp_path / "pq")) as loader, pytest.raises(UnavailableError, match="trust_remote_code"):
        loader.build_model()


def test_a_stale_hf_cache_entry_is_replaced_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry another parquant version left (its export record does not match) is redone."""
    from parquant.hf_folders import cached_hf_folder
    from parquant.store.reader import ModelReader

    monkeypatch.setenv("PARQUANT_CACHE_DIR", str(tmp_path / "cache"))
    import_checkpoint(str(EXAMPLE_MODEL), str(tmp_path / "m"))
    with ModelReader(resolve(str(tmp_path / "m"))) as reader:
        folder = cached_hf_folder(reader)
        (folder / ".parquant-export.json").write_text('{"fingerprint": "an older version", "source": "x"}')
        (folder / "model.safetensors").write_bytes(b"stale")
        assert cached_hf_folder(reader) == folder
    assert (folder / "model.safetensors").read_bytes() == (EXAMPLE_MODEL / "model.safetensors").read_bytes()


@pytest.mark.parametrize("damage", ["flipped byte", "removed file"])
def test_a_damaged_hf_cache_entry_is_rebuilt_before_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """Was: a flipped byte was quantized as is (exit 0); a removed file made every later run exit 69."""
    from parquant import hf_folders
    from parquant.store.reader import ModelReader

    monkeypatch.setenv("PARQUANT_CACHE_DIR", str(tmp_path / "cache"))
    import_checkpoint(str(EXAMPLE_MODEL), str(tmp_path / "m"))
    with ModelReader(resolve(str(tmp_path / "m"))) as reader:
        folder = hf_folders.cached_hf_folder(reader)
        assert hf_folders.entry_problem(folder, reader) is None
        weights = folder / "model.safetensors"
        if damage == "flipped byte":
            data = bytearray(weights.read_bytes())
            data[len(data) // 2] ^= 0x01
            weights.write_bytes(bytes(data))
            assert "differs from the model" in str(hf_folders.entry_problem(folder, reader))
        else:
            (folder / "tokenizer.json").unlink()
            assert "tokenizer.json is missing" in str(hf_folders.entry_problem(folder, reader))
        hf_folders._VERIFIED.clear()  # a later run (process) of parquant
        assert hf_folders.cached_hf_folder(reader) == folder
        assert hf_folders.entry_problem(folder, reader) is None
    for name in ("model.safetensors", "tokenizer.json"):
        assert (folder / name).read_bytes() == (EXAMPLE_MODEL / name).read_bytes()


def test_two_processes_filling_one_cache_entry_wait_for_each_other(tmp_path: Path) -> None:
    """Was: the second exited 75 ('another parquant run is writing')."""
    import os
    import subprocess
    import sys

    from .conftest import REPO

    import_checkpoint(str(EXAMPLE_MODEL), str(tmp_path / "m"))
    script = (
        "import sys\nfrom parquant.fs import resolve\nfrom parquant.hf_folders import cached_hf_folder\n"
        "from parquant.store.reader import ModelReader\n"
        "with ModelReader(resolve(sys.argv[1])) as reader:\n    print(cached_hf_folder(reader))\n"
    )
    env = {**os.environ, "PARQUANT_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO / "pkg")}
    runs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "m")], env=env, stdout=subprocess.PIPE)
        for _ in range(3)
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0]
    assert len(set(outputs)) == 1
    folder = Path(outputs[0].decode().strip())
    assert (folder / "model.safetensors").read_bytes() == (EXAMPLE_MODEL / "model.safetensors").read_bytes()
