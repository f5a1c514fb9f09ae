"""The smallest honest adapter that lets the real AngelSlim 0.5.0 package run on a CPU-only host.

Nothing here changes AngelSlim's math. It bridges three packaging/device gaps, measured and
explained in docs/quantize.md:

1. The 0.5.0 wheel lacks `angelslim/compressor/qat/` (no `__init__.py` in the source tree, so the
   build dropped it), yet other modules import names from it at import time. We register stand-in
   modules for those names; each raises if it is ever *used* (PTQ never uses them), and none is
   installed when the real package is present.
2. `triton` is imported at module level although no CPU PTQ path runs a kernel. Without triton,
   a stand-in whose kernels raise when launched is registered, after torch has cached "no triton"
   (a stand-in visible to torch would break torch._inductor).
3. INT4 GPTQ/AWQ code is written for a CUDA device: it hard-codes `"cuda:N"` and calls
   `torch.cuda.synchronize()`. `host_as_cuda()` runs such code on the host: every tensor or module
   sent to a CUDA device stays on the CPU, and a tensor *moved* there is copied, exactly as a real
   host-to-device transfer copies. That copy is what fixes AWQ's silent corruption on CPU: its
   search restores trial weights with `weight.data = backup.to(dev)`, which on a CPU device returns
   the backup itself, so the next trial's in-place scaling destroyed it (weights ~850x, exit 0).

On a machine with CUDA none of (3) is active and AngelSlim runs unmodified.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import UnavailableError

INSTALL_HINT = (
    "install it with: pip install -r requirements-angelslim.txt "
    "(angelslim==0.5.0 --no-deps plus its CPU-side dependencies), or pass --backend ptq"
)
_QAT_MODULES: dict[str, tuple[str, ...]] = {
    "angelslim.compressor.qat": (),
    "angelslim.compressor.qat.qat": ("QAT",),
    "angelslim.compressor.qat.plugins": ("PluginManager",),
    "angelslim.compressor.qat.modules": (),
    "angelslim.compressor.qat.modules.quantizer": ("fp8_cast_ste", "QuantLinear"),
}


def angelslim_available() -> bool:
    return importlib.util.find_spec("angelslim") is not None


def load_angelslim() -> types.ModuleType:
    """Import `angelslim.engine` (and what it needs) with the stand-ins above; raise 69 if absent."""
    spec = importlib.util.find_spec("angelslim")
    if spec is None or spec.origin is None:
        raise UnavailableError(f"the AngelSlim backend needs the angelslim package: {INSTALL_HINT}")
    _install_triton_standin()
    _install_qat_standins(Path(spec.origin).parent)
    try:
        return importlib.import_module("angelslim.engine")
    except ImportError as exc:
        raise UnavailableError(f"angelslim is installed but does not import ({exc}): {INSTALL_HINT}") from None


def _unusable(qualified: str) -> Any:
    class Unusable:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise UnavailableError(
                f"{qualified} is part of AngelSlim's QAT package, which the 0.5.0 wheel does not ship; "
                "parquant only runs post-training quantization"
            )

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise UnavailableError(f"{qualified} is not available (AngelSlim 0.5.0 wheel lacks its QAT package)")

    Unusable.__name__ = Unusable.__qualname__ = qualified.rsplit(".", 1)[-1]
    return Unusable


def _install_qat_standins(package_dir: Path) -> None:
    if (package_dir / "compressor" / "qat" / "__init__.py").exists():
        return
    for name, attributes in _QAT_MODULES.items():
        if name in sys.modules:
            continue
        module = types.ModuleType(name, "parquant stand-in: AngelSlim 0.5.0's wheel lacks this package")
        module.__path__ = []  # a package, so submodules resolve through sys.modules
        for attribute in attributes:
            setattr(module, attribute, _unusable(f"{name}.{attribute}"))
        sys.modules[name] = module


class _TritonKernel:
    def __init__(self, function: Callable[..., Any]) -> None:
        self.__name__ = getattr(function, "__name__", "kernel")

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnavailableError(f"triton kernel {self.__name__} needs a GPU with triton installed")


def _any_language_name(name: str) -> Any:
    """`tl.constexpr`, `tl.float32` ...: evaluated in kernel annotations at import time, never used."""
    if name.startswith("__"):
        raise AttributeError(name)
    return object


def _install_triton_standin() -> None:
    if "triton" in sys.modules or importlib.util.find_spec("triton") is not None:
        return
    import torch.utils._triton

    torch.utils._triton.has_triton_package()  # cache "no triton" before the stand-in is visible
    triton = types.ModuleType("triton", "parquant stand-in: kernels raise when launched (no GPU)")
    language = types.ModuleType("triton.language")
    triton.__spec__ = importlib.machinery.ModuleSpec("triton", None, is_package=True)
    language.__spec__ = importlib.machinery.ModuleSpec("triton.language", None)
    language.__getattr__ = _any_language_name  # type: ignore[method-assign]
    triton.jit = _TritonKernel  # type: ignore[attr-defined]
    triton.cdiv = lambda a, b: -(-a // b)  # type: ignore[attr-defined]
    triton.language = language  # type: ignore[attr-defined]
    sys.modules["triton"] = triton
    sys.modules["triton.language"] = language


@contextlib.contextmanager
def host_as_cuda() -> Iterator[None]:
    """Run code written for `cuda:N` on the CPU (see the module docstring); a no-op with real CUDA."""
    import torch

    if torch.cuda.is_available():
        yield
        return
    awq_search: Any = importlib.import_module("angelslim.compressor.quant.modules.awq.search")
    saved = (torch.cuda.synchronize, awq_search.get_best_device)
    torch.cuda.synchronize = lambda device=None: None
    awq_search.get_best_device = lambda: "cuda:0"
    try:
        with _HostAsCudaMode():
            yield
    finally:
        torch.cuda.synchronize, awq_search.get_best_device = saved


def _is_cuda(device: Any) -> bool:
    import torch

    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


def _make_mode() -> type:
    import torch
    from torch.overrides import TorchFunctionMode

    class HostAsCudaMode(TorchFunctionMode):
        """CUDA device arguments become CPU; a tensor sent to CUDA is copied, as a real transfer is."""

        def __torch_function__(
            self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
        ) -> Any:
            kwargs = dict(kwargs or {})
            to_cuda = _is_cuda(kwargs.get("device"))
            if to_cuda:
                kwargs["device"] = "cpu"
            if func is torch.Tensor.cuda:
                return args[0].to("cpu", copy=True)
            if func is torch.Tensor.to:
                to_cuda = to_cuda or any(_is_cuda(a) for a in args[1:])
                args = tuple("cpu" if _is_cuda(a) else a for a in args)
                if to_cuda:
                    kwargs["copy"] = True
            return func(*args, **kwargs)

    return HostAsCudaMode


class _HostAsCudaMode:
    """Lazily built TorchFunctionMode (torch is imported only when the AngelSlim backend runs)."""

    def __enter__(self) -> Any:
        self._mode = _make_mode()()
        return self._mode.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._mode.__exit__(*exc)
