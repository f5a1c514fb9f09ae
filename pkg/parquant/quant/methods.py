"""The method registry: one record per quantization method, read by everything that needs one.

Config validation, `--method` choices and help, `--compare`, the docs table (a test checks it),
the Kubernetes CPU fallback, the backends and the per-format dispatch all look methods up here.
A method not in the registry is an error everywhere. `register` adds one (a plugin, or a test's
toy method) without touching any other file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ptq import Method

ANGELSLIM = "angelslim"
PTQ = "ptq"
BACKENDS = ("auto", ANGELSLIM, PTQ)


@dataclass(frozen=True)
class Implementation:
    """One backend's version of a method: what it stores, for the docs table."""

    backend: str
    weights: str
    activations: str
    output_format: str
    loads_on_cpu: str = "dense models; not with quantized MoE experts (transformers 5 fuses experts)"


@dataclass(frozen=True)
class QuantMethod:
    """A quantization method: its backends (the first one is what `--backend auto` prefers), whether
    it needs calibration data, the built-in method that replaces it when its backend cannot run
    (`ptq_fallback`), the checkpoint format it writes (a module of `quant.formats`), and the two
    ways to run it: AngelSlim's recipe section (`angelslim_recipe(group_size)`) and the built-in
    quantizer (`builder(group_size)`)."""

    name: str
    summary: str
    implementations: tuple[Implementation, ...]
    checkpoint_format: str
    calibrated: bool = False
    ptq_fallback: str | None = None
    angelslim_recipe: Callable[[int], dict[str, Any]] | None = None
    builder: Callable[[int], Method] | None = None
    angelslim_models: tuple[str, ...] = ()  # AngelSlim model classes that run it (empty: every one)
    # seconds per parameter per calibration token on a CPU, measured on the 3.4M-parameter embedded
    # model (AWQ also searches scales per layer): quant/estimate.py's time estimates
    calibration_cost: float = 0.0
    default: bool = False
    notes: tuple[str, ...] = field(default=())
    experimental: bool = False  # works, with a known upstream defect parquant works around: notes say which

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(i.backend for i in self.implementations)

    def offered_by(self, backend: str) -> bool:
        return backend in self.backends

    def backend_for(self, requested: str) -> str:
        """The backend a run asking for `requested` uses, before anything is found missing:
        the one asked for, or under `auto` the method's first (preferred) backend."""
        return self.backends[0] if requested == "auto" else requested

    @property
    def fallback(self) -> str:
        """The built-in method that stands in when this one's backend cannot run."""
        return self.ptq_fallback or self.name

    def build(self, group_size: int) -> Method:
        if self.builder is None:
            raise KeyError(f"{self.name} has no built-in implementation")
        return self.builder(group_size)


_REGISTRY: dict[str, QuantMethod] = {}


def register(method: QuantMethod) -> QuantMethod:
    """Add a method (its name must be new, and its fallback, when it has one, a built-in method)."""
    if method.name in _REGISTRY:
        raise ValueError(f"quantization method {method.name!r} is already registered")
    if method.offered_by(PTQ) != (method.builder is not None):
        raise ValueError(f"{method.name}: a method offered by the ptq backend needs a builder, and only such a one")
    if method.offered_by(ANGELSLIM) != (method.angelslim_recipe is not None):
        raise ValueError(f"{method.name}: an AngelSlim method needs an angelslim_recipe, and only such a one")
    _REGISTRY[method.name] = method
    return method


@contextlib.contextmanager
def registered(method: QuantMethod) -> Iterator[QuantMethod]:
    """A method registered for the duration of a block (tests, plugins tried out)."""
    register(method)
    try:
        yield method
    finally:
        _REGISTRY.pop(method.name, None)


def method_names(backend: str | None = None) -> tuple[str, ...]:
    """Every method's name in registration order, or those a backend offers."""
    return tuple(name for name, m in _REGISTRY.items() if backend is None or m.offered_by(backend))


def all_methods() -> tuple[QuantMethod, ...]:
    return tuple(_REGISTRY.values())


def get_method(name: str) -> QuantMethod:
    """The method called `name`; KeyError (with the known names) when there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"quantization method {name!r} is unknown: choose one of {', '.join(_REGISTRY)}") from None


def default_method() -> str:
    return next(name for name, m in _REGISTRY.items() if m.default)


def help_text() -> str:
    """`--method` help: every method with its backends."""
    return "; ".join(
        f"{m.name} ({', '.join(m.backends)}{', experimental' if m.experimental else ''})" for m in _REGISTRY.values()
    ) + (f". Default {default_method()}")


def docs_table() -> str:
    """The Markdown table of docs/quantize.md (a test keeps the two equal)."""
    lines = [
        "| method | backend | weights | activations | calibration | output format | loads in transformers on CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in _REGISTRY.values():
        for impl in method.implementations:
            name = f"`{method.name}`" + (" (default)" if method.default else "")
            name += " (experimental)" if method.experimental else ""
            backend = "AngelSlim" if impl.backend == ANGELSLIM else "built-in PTQ"
            calibration = "yes" if method.calibrated else "no"
            lines.append(
                f"| {name} | {backend} | {impl.weights} | {impl.activations} | {calibration} | "
                f"{impl.output_format} | {impl.loads_on_cpu} |"
            )
    return "\n".join(lines)


# -- the methods parquant ships -------------------------------------------------------------------


def _channel(name: str, weight_type: str, dynamic: bool) -> Callable[[int], Method]:
    def build(group_size: int) -> Method:
        from .ptq import ChannelMethod

        return ChannelMethod(name, weight_type, activations_dynamic=dynamic)

    return build


def _rtn(name: str, symmetric: bool) -> Callable[[int], Method]:
    def build(group_size: int) -> Method:
        from .rtn import RTNInt4

        return RTNInt4(name, symmetric=symmetric, group_size=group_size if group_size > 0 else 128)

    return build


def _fp8_block(group_size: int) -> Method:
    from .fp8_block import FP8Block

    return FP8Block()


def _int4_packed(group_size: int) -> Method:
    from .rtn import PackedInt4

    return PackedInt4("int4-packed", group_size=group_size if group_size > 0 else 128)


def _angelslim(
    name: str, bits: int, helpers: tuple[str, ...] = (), **quant_method: Any
) -> Callable[[int], dict[str, Any]]:
    """AngelSlim's `compression.quantization` section (the values of its Qwen3 PTQ recipes);
    `helpers` are its `quant_helpers` (e.g. `smooth`: SmoothQuant before quantizing)."""

    def recipe(group_size: int) -> dict[str, Any]:
        method = dict(quant_method)
        if method.get("weight") == "per-group":
            method = {
                "weight": "per-group",
                "group_size": group_size,
                **{k: v for k, v in method.items() if k != "weight"},
            }
        section: dict[str, Any] = {"bits": bits, "quant_method": method, "name": name}  # AngelSlim saves this order
        if helpers:
            section["quant_helpers"] = list(helpers)
        return section

    return recipe


_FP8_ANGELSLIM = "compressed-tensors `naive-quantized`"
# GPTQ v1 output (output format, loads in transformers on CPU), written by GPTQ, GPTAQ and INT4 RTN
_GPTQ_V1 = (
    "GPTQ v1 (`qweight`, `qzeros`, `scales`, `g_idx`)",
    "needs gptqmodel; parquant dequantizes it itself for validation",
)
_INT8_LAYOUT = "compressed-tensors `int-quantized`"
register(
    QuantMethod(
        "fp8-static",
        "FP8 weights and activations with calibrated static scales",
        (
            Implementation(
                ANGELSLIM,
                "FP8 E4M3, per tensor",
                "FP8, static per-tensor scale",
                _FP8_ANGELSLIM,
                "yes (with `compressed-tensors`)",
            ),
        ),
        "compressed-tensors",
        calibrated=True,
        calibration_cost=8e-11,
        ptq_fallback="fp8-dynamic",
        angelslim_recipe=_angelslim("fp8_static", 8, weight="per-tensor", activation="per-tensor"),
    )
)
register(
    QuantMethod(
        "fp8-dynamic",
        "FP8 weights, activations quantized at run time",
        (
            Implementation(ANGELSLIM, "FP8 E4M3, per tensor", "FP8, dynamic", _FP8_ANGELSLIM),
            Implementation(
                PTQ, "FP8 E4M3, **per channel**", "FP8, dynamic per token", "compressed-tensors `float-quantized`"
            ),
        ),
        "compressed-tensors",
        angelslim_recipe=_angelslim("fp8_dynamic", 8, weight="per-tensor", activation="per-tensor"),
        builder=_channel("fp8-dynamic", "float", dynamic=True),
    )
)
register(
    QuantMethod(
        "int8-dynamic",
        "INT8 weights per channel, activations per token at run time (W8A8)",
        (
            Implementation(
                ANGELSLIM, "INT8, per channel", "INT8, dynamic per token", "compressed-tensors `int-quantized`"
            ),
            Implementation(PTQ, "INT8, per channel", "INT8, dynamic per token", "compressed-tensors `int-quantized`"),
        ),
        "compressed-tensors",
        angelslim_recipe=_angelslim("int8_dynamic", 8, weight="per-channel", activation="per-token"),
        builder=_channel("int8-dynamic", "int", dynamic=True),
    )
)
register(
    QuantMethod(
        "int4-gptq",
        "INT4 weights in groups, GPTQ (second-order error correction)",
        (
            Implementation(
                ANGELSLIM,
                "INT4, group 128 (`--group-size`), symmetric, desc_act",
                "16-bit",
                *_GPTQ_V1,
            ),
        ),
        "gptq",
        calibrated=True,
        calibration_cost=8e-11,
        ptq_fallback="int4-rtn",
        angelslim_recipe=_angelslim("int4_gptq", 4, weight="per-group"),
    )
)
register(
    QuantMethod(
        "int4-awq",
        "INT4 weights in groups with zero points, AWQ (activation-aware scales)",
        (
            Implementation(
                ANGELSLIM,
                "INT4, group 128, zero point",
                "16-bit",
                "AWQ GEMM",
                "needs a GPU AWQ kernel; parquant dequantizes it itself",
            ),
        ),
        "awq",
        calibrated=True,
        calibration_cost=4.6e-10,
        ptq_fallback="int4-rtn-asym",
        angelslim_recipe=_angelslim("int4_awq", 4, weight="per-group", zero_point=True, mse_range=False),
    )
)
register(
    QuantMethod(
        "int8-weight",
        "INT8 weights per output channel, 16-bit activations (W8A16)",
        (Implementation(PTQ, "INT8, per channel, symmetric", "16-bit", "compressed-tensors `int-quantized` (W8A16)"),),
        "compressed-tensors",
        builder=_channel("int8-weight", "int", dynamic=False),
        default=True,
    )
)
register(
    QuantMethod(
        "int4-rtn",
        "INT4 round-to-nearest in groups, symmetric: the data-free baseline GPTQ and AWQ must beat",
        (
            Implementation(
                PTQ,
                "INT4, group 128 (`--group-size`), symmetric, round to nearest",
                "16-bit",
                *_GPTQ_V1,
            ),
        ),
        "gptq",
        builder=_rtn("int4-rtn", symmetric=True),
    )
)
register(
    QuantMethod(
        "int4-rtn-asym",
        "INT4 round-to-nearest in groups with zero points",
        (
            Implementation(
                PTQ,
                "INT4, group 128, zero point, round to nearest",
                "16-bit",
                *_GPTQ_V1,
            ),
        ),
        "gptq",
        builder=_rtn("int4-rtn-asym", symmetric=False),
    )
)
register(
    QuantMethod(
        "fp8-block",
        "FP8 weights in 128x128 blocks, activations per group of 128 at run time (DeepSeek-V3's layout)",
        (
            Implementation(
                PTQ,
                "FP8 E4M3, one scale per 128x128 block",
                "FP8, dynamic per group of 128",
                "compressed-tensors `float-quantized` (block)",
            ),
        ),
        "compressed-tensors",
        builder=_fp8_block,
    )
)
register(
    QuantMethod(
        "int4-packed",
        "INT4 round-to-nearest in groups, symmetric, as compressed-tensors pack-quantized (W4A16)",
        (
            Implementation(
                PTQ,
                "INT4, group 128 (`--group-size`), symmetric, round to nearest",
                "16-bit",
                "compressed-tensors `pack-quantized`",
            ),
        ),
        "compressed-tensors",
        builder=_int4_packed,
    )
)

_DEQUANTIZED = "no CPU kernel in transformers; parquant dequantizes it itself for validation"
register(
    QuantMethod(
        "int4-gptaq",
        "INT4 weights in groups, GPTAQ (GPTQ that also corrects the error quantized inputs carry)",
        (
            Implementation(
                ANGELSLIM,
                "INT4, group 128 (`--group-size`), symmetric",
                "16-bit",
                *_GPTQ_V1,
            ),
        ),
        "gptq",
        calibrated=True,
        calibration_cost=8e-11,
        ptq_fallback="int4-rtn",
        angelslim_recipe=_angelslim("int4_gptaq", 4, weight="per-group"),
    )
)
register(
    QuantMethod(
        "w4a8-fp8",
        "INT4 weights in groups with FP8 activations (W4A8): 4-bit memory, FP8 tensor-core math",
        (
            Implementation(
                ANGELSLIM,
                "INT4, group 128 (`--group-size`), under a per-tensor FP8 scale",
                "FP8, static per-tensor scale",
                "AngelSlim W4A8 (`qweight` int8 pairs, `weight_scale_int4`, `weight_scale`, `input_scale`)",
                _DEQUANTIZED,
            ),
        ),
        "compressed-tensors",
        calibrated=True,
        calibration_cost=4e-11,
        ptq_fallback="int4-packed",
        angelslim_recipe=_angelslim("w4a8_fp8", 8, weight="per-group", activation="per-tensor"),
        experimental=True,
        notes=(
            "served by vLLM / TensorRT-LLM W4A8 kernels on Hopper GPUs",
            "experimental: AngelSlim 0.5.0 stores its group steps as absmax/8 for INT4 codes made with absmax/7 "
            "(every weight 12.5% too small); parquant detects this and corrects the steps exactly (x8/7). Its "
            "config.json (compressed-tensors `naive-quantized`) does not describe the W4A8 layout: serving needs "
            "a loader that knows it",
        ),
    )
)
register(
    QuantMethod(
        "int8-smooth",
        "SmoothQuant W8A8: activation outliers moved into the weights, then INT8 per channel / per token",
        (
            Implementation(
                ANGELSLIM,
                "INT8, per channel, after smoothing",
                "INT8, dynamic per token",
                "compressed-tensors `int-quantized`",
            ),
        ),
        "compressed-tensors",
        calibrated=True,
        calibration_cost=8e-11,
        ptq_fallback="int8-dynamic",
        angelslim_recipe=_angelslim("int8_dynamic", 8, ("smooth",), weight="per-channel", activation="per-token"),
        angelslim_models=("Qwen",),
    )
)
register(
    QuantMethod(
        "nvfp4",
        "NVFP4 W4A4: FP4 E2M1 weights and activations in blocks of 16 with FP8 block scales",
        (
            Implementation(
                ANGELSLIM,
                "FP4 E2M1, block 16, FP8 block scale x FP32 global scale",
                "FP4, static global scale",
                "NVFP4 (`weight` FP4 pairs, `weight_scale`, `weight_scale_2`, `input_scale`)",
                _DEQUANTIZED,
            ),
        ),
        "compressed-tensors",
        calibrated=True,
        calibration_cost=1.2e-10,
        ptq_fallback="int4-packed",
        angelslim_recipe=_angelslim("nvfp4", 4, weight="per-block", activation="per-block", group_size=16),
        angelslim_models=("Qwen",),
        notes=("served by FP4 tensor cores (Blackwell) in vLLM / TensorRT-LLM",),
    )
)
