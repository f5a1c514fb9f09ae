"""WeightLoader: Parquet model -> torch tensors and transformers models, for validate/benchmark stages.

Tensors load lazily, one at a time, straight from their row groups. A whole model is built by
calling `from_pretrained` on the model's HF folder (exported once per content into the cache,
hf_folders.py): exactly what a user's own transformers/vLLM loader would see, including
compressed-tensors quantized models.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidInputError, UnavailableError
from .fs import resolve
from .hf_folders import cached_hf_folder
from .logs import third_party_output
from .quant.detect import QuantizationScheme, detect_quantization, needs_parquant_dequantizer
from .quant.dtypes import torch_dtype
from .store.reader import ModelReader
from .store.schema import TensorSpec
from .workdirs import work_folder

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


_TORCH_COPY_BYTES = 2**20


def cast_parameters(model: Any, dtype: torch.dtype) -> None:
    """Cast the weights only. `Module.to(dtype)` would also cast float buffers such as RoPE's
    `inv_freq`, which a reference model keeps in float32: validate would then measure an error
    that quantization did not cause."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            parameter.data = parameter.data.to(dtype)


class LazyStateDict(Mapping[str, "torch.Tensor"]):
    """A read-only state dict whose tensors are read from Parquet on first access."""

    def __init__(self, loader: WeightLoader) -> None:
        self._loader = loader

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._loader.reader.manifest.tensors:
            raise KeyError(name)
        return self._loader.load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._loader.names())

    def __len__(self) -> int:
        return len(self._loader.names())


class WeightLoader:
    """Open a Parquet model URL; list, load and build. Use as a context manager."""

    def __init__(self, url: str, storage_options: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.reader = ModelReader(resolve(url, storage_options))

    def names(self) -> list[str]:
        return self.reader.tensor_names()

    def spec(self, name: str) -> TensorSpec:
        return self.reader.tensor_spec(name)

    def config(self) -> dict[str, Any]:
        return self.reader.config()

    def quantization(self) -> QuantizationScheme:
        return detect_quantization(self.config(), self.names())

    def load(self, name: str) -> torch.Tensor:
        """One tensor, with its stored dtype and shape (bit-exact)."""
        import torch

        spec = self.spec(name)
        tensor = torch.empty(spec.shape, dtype=torch_dtype(spec.dtype))
        if not spec.nbytes:
            return tensor
        flat = tensor.view(-1).view(torch.uint8)
        with self.reader.mapped_tensor(name) as views:
            if views is None:
                self.reader.read_tensor_into(name, flat.numpy().data)
            elif spec.nbytes < _TORCH_COPY_BYTES:  # small: a plain memory copy costs less than torch's dispatch
                flat.numpy().data[:] = views[0] if len(views) == 1 else b"".join(views)
            else:
                position = 0
                for view in views:  # one copy from the page cache, by torch's threads
                    flat[position : position + len(view)].copy_(torch.frombuffer(view, dtype=torch.uint8))
                    position += len(view)
        return tensor

    def state_dict(self) -> LazyStateDict:
        return LazyStateDict(self)

    def build_model(self, dtype: Any = "auto", trust_remote_code: bool = False) -> PreTrainedModel:
        """A transformers model with these weights, in eval mode, on CPU, computing in `dtype`
        ("auto": the checkpoint's own; validate passes the reference's, so like is compared with like).

        GPTQ and AWQ checkpoints need GPU kernel libraries in transformers, and transformers 5
        holds an MoE layer's experts fused (no `nn.Linear` for compressed-tensors to replace), so
        quantized experts do not load either: both are dequantized here instead (parquant's own
        dequantizers), giving the float model they stand for.
        """
        from transformers import AutoModelForCausalLM
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        model_type = self.config().get("model_type")
        if not trust_remote_code and model_type not in CONFIG_MAPPING:
            raise UnavailableError(
                f"architecture {model_type!r} is not built into transformers; parquant does not run remote code "
                "by default (trust_remote_code is off)"
            )
        quantization = self.config().get("quantization_config")
        if quantization and needs_parquant_dequantizer(quantization, self.names()):
            return self._dequantized_model(None if dtype == "auto" else dtype)
        folder = cached_hf_folder(self.reader)
        with third_party_output("transformers", stdout=False):  # its loading bars: debug log
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code)
        model.train(False)  # eval mode, spelled so that strict mypy can see its type
        return model

    def tokenizer(self) -> Any:
        """The model's tokenizer, from the files stored with it (all of them are small)."""
        from transformers import AutoTokenizer

        with work_folder("tokenizer") as folder:
            for name in self.reader.file_names():
                target = Path(folder) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.reader.read_file(name))
            try:
                return AutoTokenizer.from_pretrained(folder)
            except (OSError, ValueError) as exc:
                raise UnavailableError(f"{self.url} has no usable tokenizer files ({exc})") from None

    def _dequantized_model(self, dtype: Any = None) -> PreTrainedModel:
        """The float model a quantized checkpoint stands for: its dequantized weights, written as a
        plain checkpoint and loaded by `from_pretrained`, whose weight conversions put per-expert
        tensors into the fused experts transformers 5 holds."""
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM

        from .quant.dequant import dequantized_state_dict

        config = self.config()
        scale_dtypes = {self.spec(n).dtype for n in self.names() if n.endswith((".scales", ".weight_scale"))}
        target = dtype or {"F16": torch.float16, "F32": torch.float32}.get(
            min(scale_dtypes, default="BF16"), torch.bfloat16
        )
        state = dequantized_state_dict({n: self.load(n) for n in self.names()}, config["quantization_config"], target)
        plain = {k: v for k, v in config.items() if k != "quantization_config"}
        with work_folder("dequantized") as folder:
            (Path(folder) / "config.json").write_text(json.dumps(plain))
            save_file({k: v.contiguous() for k, v in state.items()}, str(Path(folder) / "model.safetensors"))
            del state
            try:
                with third_party_output("transformers", stdout=False):
                    loaded: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=target, output_loading_info=True)
            except (RuntimeError, ValueError) as exc:  # weights that do not fit the architecture
                raise InvalidInputError(
                    f"{self.url}: dequantized weights do not fit the architecture ({exc})"
                ) from None
        model: PreTrainedModel = loaded[0]
        missing, unexpected = sorted(loaded[1].get("missing_keys", ())), sorted(loaded[1].get("unexpected_keys", ()))
        if missing or unexpected:
            raise InvalidInputError(
                f"{self.url}: dequantized weights do not fit the architecture (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        cast_parameters(model, target)
        model.train(False)
        return model

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> WeightLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
