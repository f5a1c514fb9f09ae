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
from typing import Any

from .recipe import Recipe, RecipeGroup, Scheme

ANGELSLIM = "angelslim"
PTQ = "ptq"
# The names of the backends (the objects are in parquant.backends, which sits above this layer:
# config validation checks a name against this list). The shipped ones are named here; one
# registered later (a plugin, a test's toy) adds its name when it registers.
_BACKEND_NAMES: list[str] = ["auto", ANGELSLIM, PTQ]


def backend_names() -> tuple[str, ...]:
    """`auto` and every registered backend's name, in registration order."""
    return tuple(_BACKEND_NAMES)


def add_backend_name(name: str) -> None:
    if name not in _BACKEND_NAMES:
        _BACKEND_NAMES.append(name)


def remove_backend_name(name: str) -> None:
    if name in _BACKEND_NAMES and name not in ("auto", ANGELSLIM, PTQ):
        _BACKEND_NAMES.remove(name)


@dataclass(frozen=True)
class Implementation:
    """One backend's version of a method: its preset recipe (for a `--group-size`), and what the
    docs table says of its output beyond the recipe."""

    backend: str
    recipe: Callable[[int], Recipe]
    output_format: str
    loads_on_cpu: str = "dense models; not with quantized MoE experts (transformers 5 fuses experts)"

    @property
    def scheme(self) -> Scheme:
        return self.recipe(128).single

    @property
    def weights(self) -> str:
        return self.scheme.describe_weights()

    @property
    def activations(self) -> str:
        return self.scheme.describe_activations()


@dataclass(frozen=True)
class QuantMethod:
    """A quantization method: a preset recipe per backend (the first backend is what `--backend
    auto` prefers), the built-in method that replaces it when its backend cannot run
    (`ptq_fallback`), and what the docs say of it. Everything else (calibration, the quantizer,
    AngelSlim's section, the config.json block) is derived from the recipe."""

    name: str
    summary: str
    implementations: tuple[Implementation, ...]
    ptq_fallback: str | None = None
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

    @property
    def calibrated(self) -> bool:
        """Whether its preferred implementation needs calibration data."""
        return self.implementations[0].recipe(128).calibrated

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

    def recipe(self, backend: str, group_size: int = 128) -> Recipe:
        """The preset recipe `backend` runs for this method."""
        for implementation in self.implementations:
            if implementation.backend == backend:
                return implementation.recipe(group_size)
        raise KeyError(f"{self.name} is not offered by the {backend} backend")


_REGISTRY: dict[str, QuantMethod] = {}


def register(method: QuantMethod) -> QuantMethod:
    """Add a method (its name must be new, and its fallback, when it has one, a built-in method)."""
    if method.name in _REGISTRY:
        raise ValueError(f"quantization method {method.name!r} is already registered")
    if len(set(method.backends)) != len(method.backends):
        raise ValueError(f"{method.name}: one implementation per backend")
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


def did_you_mean(name: str) -> str:
    """`"did you mean fp8-dynamic? "` for a name close to a method's, else "" (for refusals)."""
    import difflib

    close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.6)
    return f"did you mean {close[0]}? " if close else ""


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
        "| method | backend | weights | activations | algorithm | output format | loads in transformers on CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in _REGISTRY.values():
        for impl in method.implementations:
            name = f"`{method.name}`" + (" (default)" if method.default else "")
            name += " (experimental)" if method.experimental else ""
            backend = "AngelSlim" if impl.backend == ANGELSLIM else "built-in PTQ"
            recipe = impl.recipe(128)
            algorithm = ALGORITHM_NAMES[recipe.algorithm] + (" (calibration)" if recipe.calibrated else " (data-free)")
            lines.append(
                f"| {name} | {backend} | {impl.weights} | {impl.activations} | {algorithm} | "
                f"{impl.output_format} | {impl.loads_on_cpu} |"
            )
    return "\n".join(lines)


# -- the methods parquant ships -------------------------------------------------------------------

ALGORITHM_NAMES = {
    "rtn": "round to nearest",
    "minmax": "min-max scales",
    "gptq": "GPTQ",
    "gptaq": "GPTAQ",
    "awq": "AWQ",
    "smoothquant": "SmoothQuant",
}


def _args(bits: int, kind: str, strategy: str, **extra: Any) -> dict[str, Any]:
    """compressed-tensors QuantizationArgs fields, in the order the library writes them."""
    args: dict[str, Any] = {"num_bits": bits, "type": kind, "symmetric": extra.pop("symmetric", True)}
    args["group_size"] = extra.pop("group_size", None)
    args["strategy"] = strategy
    args.update(extra)
    return args


def _channel8(kind: str) -> dict[str, Any]:
    return _args(8, kind, "channel", dynamic=False, observer="minmax")


def _per_token(kind: str) -> dict[str, Any]:
    return _args(8, kind, "token", dynamic=True, observer=None)


def _group4(group_size: int, symmetric: bool = True) -> dict[str, Any]:
    return _args(4, "int", "group", symmetric=symmetric, group_size=group_size, dynamic=False)


def _preset(
    name: str,
    weights: Callable[[int], dict[str, Any]],
    activations: dict[str, Any] | None = None,
    layout: str | None = None,
    algorithm: str = "rtn",
    checkpoint_format: str = "compressed-tensors",
) -> Callable[[int], Recipe]:
    """A whole-model preset: one group targeting every linear layer, for a `--group-size`."""

    def recipe(group_size: int) -> Recipe:
        scheme = Scheme(weights(group_size), activations, layout)
        return Recipe(name, (RecipeGroup(("Linear",), scheme),), (), algorithm, checkpoint_format)

    return recipe


def _built_in_group(group_size: int) -> int:
    """The built-in INT4 methods' group: `--group-size`, 128 for -1 (they have no per-channel INT4)."""
    return group_size if group_size > 0 else 128


_NAIVE = "naive-quantized"
_FP8_ANGELSLIM = "compressed-tensors `naive-quantized`"
# GPTQ v1 output (output format, loads in transformers on CPU), written by GPTQ, GPTAQ and INT4 RTN
_GPTQ_V1 = (
    "GPTQ v1 (`qweight`, `qzeros`, `scales`, `g_idx`)",
    "needs gptqmodel; parquant dequantizes it itself for validation",
)
_FP8_TENSOR = _args(8, "float", "tensor", dynamic=False, observer="minmax")
register(
    QuantMethod(
        "fp8-static",
        "FP8 weights and activations with calibrated static scales",
        (
            Implementation(
                ANGELSLIM,
                _preset("fp8-static", lambda g: _FP8_TENSOR, _FP8_TENSOR, _NAIVE, "minmax"),
                _FP8_ANGELSLIM,
                "yes (with `compressed-tensors`)",
            ),
        ),
        calibration_cost=8e-11,
        ptq_fallback="fp8-dynamic",
    )
)
register(
    QuantMethod(
        "fp8-dynamic",
        "FP8 weights, activations quantized at run time",
        (
            Implementation(
                ANGELSLIM,
                _preset("fp8-dynamic", lambda g: _FP8_TENSOR, _args(8, "float", "tensor", dynamic=True), _NAIVE),
                _FP8_ANGELSLIM,
            ),
            Implementation(
                PTQ,
                _preset("fp8-dynamic", lambda g: _channel8("float"), _per_token("float"), "float-quantized"),
                "compressed-tensors `float-quantized`",
            ),
        ),
    )
)
register(
    QuantMethod(
        "int8-dynamic",
        "INT8 weights per channel, activations per token at run time (W8A8)",
        (
            Implementation(
                ANGELSLIM,
                _preset("int8-dynamic", lambda g: _channel8("int"), _per_token("int"), "int-quantized"),
                "compressed-tensors `int-quantized`",
            ),
            Implementation(
                PTQ,
                _preset("int8-dynamic", lambda g: _channel8("int"), _per_token("int"), "int-quantized"),
                "compressed-tensors `int-quantized`",
            ),
        ),
    )
)
register(
    QuantMethod(
        "int4-gptq",
        "INT4 weights in groups, GPTQ (second-order error correction)",
        (
            Implementation(
                ANGELSLIM, _preset("int4-gptq", _group4, algorithm="gptq", checkpoint_format="gptq"), *_GPTQ_V1
            ),
        ),
        calibration_cost=8e-11,
        ptq_fallback="int4-rtn",
    )
)
register(
    QuantMethod(
        "int4-awq",
        "INT4 weights in groups with zero points, AWQ (activation-aware scales)",
        (
            Implementation(
                ANGELSLIM,
                _preset("int4-awq", lambda g: _group4(g, symmetric=False), algorithm="awq", checkpoint_format="awq"),
                "AWQ GEMM",
                "needs a GPU AWQ kernel; parquant dequantizes it itself",
            ),
        ),
        calibration_cost=4.6e-10,
        ptq_fallback="int4-rtn-asym",
    )
)
register(
    QuantMethod(
        "int8-weight",
        "INT8 weights per output channel, 16-bit activations (W8A16)",
        (
            Implementation(
                PTQ,
                _preset("int8-weight", lambda g: _channel8("int"), None, "int-quantized"),
                "compressed-tensors `int-quantized` (W8A16)",
            ),
        ),
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
                _preset("int4-rtn", lambda g: _group4(_built_in_group(g)), checkpoint_format="gptq"),
                *_GPTQ_V1,
            ),
        ),
    )
)
register(
    QuantMethod(
        "int4-rtn-asym",
        "INT4 round-to-nearest in groups with zero points",
        (
            Implementation(
                PTQ,
                _preset(
                    "int4-rtn-asym", lambda g: _group4(_built_in_group(g), symmetric=False), checkpoint_format="gptq"
                ),
                *_GPTQ_V1,
            ),
        ),
    )
)
register(
    QuantMethod(
        "fp8-block",
        "FP8 weights in 128x128 blocks, activations per group of 128 at run time (DeepSeek-V3's layout)",
        (
            Implementation(
                PTQ,
                _preset(
                    "fp8-block",
                    lambda g: _args(8, "float", "block", block_structure=[128, 128], dynamic=False),
                    _args(8, "float", "group", group_size=128, dynamic=True),
                    "float-quantized",
                ),
                "compressed-tensors `float-quantized` (block)",
            ),
        ),
    )
)
register(
    QuantMethod(
        "int4-packed",
        "INT4 round-to-nearest in groups, symmetric, as compressed-tensors pack-quantized (W4A16)",
        (
            Implementation(
                PTQ,
                _preset("int4-packed", lambda g: _group4(_built_in_group(g)), None, "pack-quantized"),
                "compressed-tensors `pack-quantized`",
            ),
        ),
    )
)

_DEQUANTIZED = "no CPU kernel in transformers; parquant dequantizes it itself for validation"
register(
    QuantMethod(
        "int4-gptaq",
        "INT4 weights in groups, GPTAQ (GPTQ that also corrects the error quantized inputs carry)",
        (
            Implementation(
                ANGELSLIM, _preset("int4-gptaq", _group4, algorithm="gptaq", checkpoint_format="gptq"), *_GPTQ_V1
            ),
        ),
        calibration_cost=8e-11,
        ptq_fallback="int4-rtn",
    )
)
register(
    QuantMethod(
        "w4a8-fp8",
        "INT4 weights in groups with FP8 activations (W4A8): 4-bit memory, FP8 tensor-core math",
        (
            Implementation(
                ANGELSLIM,
                _preset("w4a8-fp8", _group4, _FP8_TENSOR, _NAIVE, "minmax"),
                "AngelSlim W4A8 (`qweight` int8 pairs, `weight_scale_int4`, `weight_scale`, `input_scale`)",
                _DEQUANTIZED,
            ),
        ),
        calibration_cost=4e-11,
        ptq_fallback="int4-packed",
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
                _preset("int8-smooth", lambda g: _channel8("int"), _per_token("int"), "int-quantized", "smoothquant"),
                "compressed-tensors `int-quantized`",
            ),
        ),
        calibration_cost=8e-11,
        ptq_fallback="int8-dynamic",
        angelslim_models=("Qwen",),
    )
)
_FP4_BLOCK = _args(4, "float", "tensor_group", group_size=16, dynamic=False, observer="minmax")
register(
    QuantMethod(
        "nvfp4",
        "NVFP4 W4A4: FP4 E2M1 weights and activations in blocks of 16 with FP8 block scales",
        (
            Implementation(
                ANGELSLIM,
                _preset(
                    "nvfp4",
                    lambda g: _FP4_BLOCK,
                    _args(4, "float", "tensor_group", group_size=16, dynamic="local", observer="minmax"),
                    "nvfp4-pack-quantized",
                    "minmax",
                ),
                "NVFP4 (`weight` FP4 pairs, `weight_scale`, `weight_scale_2`, `input_scale`)",
                _DEQUANTIZED,
            ),
        ),
        calibration_cost=1.2e-10,
        ptq_fallback="int4-packed",
        angelslim_models=("Qwen",),
        notes=("served by FP4 tensor cores (Blackwell) in vLLM / TensorRT-LLM",),
    )
)
