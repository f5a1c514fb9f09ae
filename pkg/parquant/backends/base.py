"""What a quantization backend is, and the registry the quantize stage chooses from.

A backend answers three questions about a model and a recipe: can it run them (`eligible`: None,
or the reason it cannot), what a run would cost (`estimate`), and the run itself (`run`: the model
items to write, streamed, plus what it found). The stage resolves its plan once into a backend
object and a recipe (stages/quantize.py `choose`), records both, and writes whatever items the
backend yields through the same writer, lock and commit. Adding a backend is a module of its own
and one `register(...)`; nothing else names it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..quant.config import QuantizationConfig
from ..quant.estimate import Estimate
from ..quant.linear_layers import ModelLayers
from ..quant.methods import add_backend_name, remove_backend_name
from ..quant.recipe import Recipe
from ..store.items import ModelItem
from ..store.reader import ModelReader


@dataclass(frozen=True)
class ModelFacts:
    """What eligibility and estimates look at: the model's config and sizes, no weights."""

    model_type: str
    parameters: int
    model_bytes: int
    config: Mapping[str, Any]


@dataclass(frozen=True)
class Hardware:
    device: str  # "cpu" or "cuda"


@dataclass
class BackendJob:
    """One run, as a backend sees it: the source (URL and open reader), the recipe, the run's
    configuration (calibration, pass-through options) and a scratch folder, the only place a
    backend may write."""

    model: str
    reader: ModelReader
    recipe: Recipe
    config: QuantizationConfig
    device: str
    workdir: Path
    storage_options: Mapping[str, str] | None = None


@dataclass
class BackendReport:
    """What a backend found besides the items: the quantize result carries these fields."""

    quantized_layers: int | None = None  # the built-in PTQ
    skipped_layers: list[str] | None = None
    calibration_samples: int | None = None  # calibrated backends
    quantize_seconds: float | None = None  # the backend's own run, before the writer
    export_seconds: float | None = None  # AngelSlim: Parquet -> its HF folder (0: cached)
    engine_seconds: float | None = None  # AngelSlim's engine itself
    expert_coverage: dict[str, Any] | None = None  # MoE: calibration tokens per expert


@dataclass
class BackendOutput:
    """A run's result: the items to write (tensors computed lazily, as the writer asks), the
    modules stored quantized, those not asked for (ignored or untargeted), and what to record."""

    items: list[ModelItem]
    layers: ModelLayers
    quantized: set[str]
    not_asked: list[str]  # module names or ignore patterns: left in full precision on purpose
    report: BackendReport = field(default_factory=BackendReport)
    warnings: list[str] = field(default_factory=list)
    safetensors_layout: dict[str, dict[str, Any]] | None = None
    kept_fused: list[str] = field(default_factory=list)  # 3-D fused experts copied unquantized
    nonfinite: dict[str, int] = field(default_factory=dict)  # NaN/Inf per tensor, counted while written


class Backend(Protocol):
    @property
    def name(self) -> str:
        """What `--backend` calls it."""
        ...

    @property
    def title(self) -> str:
        """What messages call it."""
        ...

    @property
    def fans_out(self) -> bool:
        """Whether its writes may be split over fan-out workers (`--workers`, Indexed Jobs)."""
        ...

    def recipe_for(self, method: str, group_size: int) -> Recipe | None:
        """Its preset recipe for a registry method, None when it does not offer the method."""
        ...

    def eligible(self, model: ModelFacts, recipe: Recipe, device: str) -> str | None: ...

    def describe(self, recipe: Recipe, device: str) -> str:
        """The plan's reason line when it runs the recipe."""
        ...

    def estimate(
        self, model: ModelFacts, recipe: Recipe, config: QuantizationConfig, hardware: Hardware
    ) -> Estimate: ...

    def run(self, job: BackendJob) -> BackendOutput: ...


_BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    if backend.name in _BACKENDS or backend.name == "auto":  # (the shipped names are known below already)
        raise ValueError(f"backend {backend.name!r} is already registered")
    _BACKENDS[backend.name] = backend
    add_backend_name(backend.name)
    return backend


@contextlib.contextmanager
def registered(backend: Backend) -> Iterator[Backend]:
    """A backend registered for the duration of a block (tests, plugins tried out)."""
    register(backend)
    try:
        yield backend
    finally:
        _BACKENDS.pop(backend.name, None)
        remove_backend_name(backend.name)


def get_backend(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise KeyError(f"backend {name!r} is unknown: choose one of auto, {', '.join(_BACKENDS)}") from None


def all_backends() -> tuple[Backend, ...]:
    return tuple(_BACKENDS.values())
