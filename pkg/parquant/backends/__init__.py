"""Quantization backends, registered: the built-in PTQ and AngelSlim ship; a third is one module away.

See base.py for what a backend is. The shipped ones register here, AngelSlim first: a method's
own order of backends (quant/methods.py) still decides what `--backend auto` prefers for it.
"""

from __future__ import annotations

from . import angelslim as _angelslim  # noqa: F401  (registers itself)
from . import ptq as _ptq  # noqa: F401  (registers itself)
from .base import (
    Backend,
    BackendJob,
    BackendOutput,
    BackendReport,
    Hardware,
    ModelFacts,
    all_backends,
    get_backend,
    register,
    registered,
)

__all__ = [
    "Backend",
    "BackendJob",
    "BackendOutput",
    "BackendReport",
    "Hardware",
    "ModelFacts",
    "all_backends",
    "get_backend",
    "register",
    "registered",
]
