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
