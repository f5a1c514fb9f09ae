"""validate measures quantization, not itself: a lossless candidate scores exactly 1.0 on every path.

The reference is the candidate's own restored weights, stored as a plain float model, so the
candidate loses nothing against it. Any score below 1.0 would be error that validate adds itself
(e.g. casting RoPE buffers to bf16 when it rebuilds a GPTQ/AWQ model, or comparing weights with
values the model never computes with).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from parquant.quant.config import load_config
from parquant.stages.hf_import import import_checkpoint
from parquant.stages.quantize import quantize
from parquant.validate import PrecisionValidator
from parquant.weights import WeightLoader, cast_parameters

from .conftest import EXAMPLE_MODEL, TOKENIZER_FILES, embedded_model_in
from .helpers import SMALL_CALIBRATION

EVAL = EXAMPLE_MODEL.parent / "data" / "eval.txt"
# path -> (method, backend) of the candidate: each checkpoint layout validate rebuilds models from
PATHS = {
    "float": None,
    "compressed-tensors": ("int8-weight", "ptq"),
    "gptq": ("int4-rtn", "ptq"),
    "awq": ("int4-awq", "angelslim"),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("lossless")
    with embedded_model_in(folder, "ref"):
        yield folder


def _restored_reference(candidate: str, folder: Path) -> str:
    """The candidate's weights as the model really runs them, re-stored as a plain float model."""
    from transformers import AutoModelForCausalLM

    from parquant.quant.linear_layers import plain_config

    with WeightLoader(candidate) as loader:
        config = loader.config()
        model = loader.build_model()
    with torch.no_grad():
        model(torch.arange(1, 9).unsqueeze(0))  # compressed-tensors decompresses on the first forward
    plain = AutoModelForCausalLM.from_config(plain_config(config))
    names = set(plain.state_dict())
    state = {k: v for k, v in model.state_dict().items() if k in names}
    plain.load_state_dict(state, strict=False)
    cast_parameters(plain, next(v.dtype for k, v in state.items() if k.endswith("q_proj.weight")))
    plain.save_pretrained(folder / "hf")
    for name in TOKENIZER_FILES:
        if (EXAMPLE_MODEL / name).exists():
            shutil.copy(EXAMPLE_MODEL / name, folder / "hf" / name)
    import_checkpoint(str(folder / "hf"), str(folder / "pq"))
    return str(folder / "pq")


@pytest.mark.parametrize("path", sorted(PATHS))
def test_lossless_candidate_scores_exactly_one(path: str, root: Path) -> None:
    recipe = PATHS[path]
    if recipe is None:
        reference = str(root / "ref")
        import_checkpoint(str(EXAMPLE_MODEL), str(root / "float"))  # the reference, re-stored
        candidate = str(root / "float")
    else:
        method, backend = recipe
        flags = {
            "method": method,
            "backend": backend,
            **SMALL_CALIBRATION,
        }
        candidate = str(root / method)
        quantize(str(root / "ref"), candidate, load_config(flags=flags, environ={}))
        reference = _restored_reference(candidate, root / f"{method}-restored")
    result = PrecisionValidator(reference, candidate, str(EVAL), max_tokens=512).run()
    assert result.logits_cosine_mean == 1.0 and result.logits_cosine_worst == 1.0
    assert result.perplexity_ratio == 1.0 and result.top1_agreement == 1.0 and result.kl_divergence == 0.0
    assert all(t.cosine == 1.0 and t.max_abs_error == 0.0 for t in result.tensors), [
        t for t in result.tensors if t.cosine != 1.0 or t.max_abs_error != 0.0
    ][:3]
