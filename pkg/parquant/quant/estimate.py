"""How long and how much memory a quantization will take, from measured per-method costs.

The costs were measured on a 2-core CPU (the CI machine; docs/tutorials/performance.md has the
runs) and scale with what drives them: the model's bytes (reading and writing it), its parameter
count times the calibration tokens (every calibrated method runs the model over its calibration
set, and AWQ also searches scales per layer), and a fixed cost per backend (AngelSlim's imports,
model build and save). On a GPU the calibration term is far smaller; it is divided by a rough
factor there, and the estimate says so. A test checks the figures against real runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Fixed seconds per run: interpreter + imports + planning (PTQ); AngelSlim adds its own imports,
# building the model from its HF folder and saving it (measured 8-11 s on the 3.4M-parameter
# embedded model, whatever the method).
FIXED_SECONDS = {"ptq": 2.5, "angelslim": 9.5}
# Seconds per GB of model read and written: the built-in PTQ streams at ~190 MB/s (bench
# quantize_bench: 1 GB in 5.3 s); AngelSlim exports, loads, saves and imports the model.
SECONDS_PER_GB = {"ptq": 5.5, "angelslim": 20.0}
# Seconds per parameter per calibration token on CPU are each method's own figure: the registry's
# `calibration_cost` (quant/methods.py), passed in by the caller.
GPU_CALIBRATION_SPEEDUP = 30.0  # rough: not measured on a GPU here
# Peak host memory per byte of model: AngelSlim loads the model plus calibration activations;
# PTQ streams one tensor at a time.
MEMORY_FACTOR = {"angelslim": 3.0, "ptq": 0.0}
STREAMING_BYTES = 512 * 2**20
LONG_RUN_SECONDS = 600.0  # a CPU run estimated longer than this is announced before it starts


@dataclass(frozen=True)
class Estimate:
    model_gb: float
    parameters: int
    calibration_tokens: int
    peak_memory_gb: float
    disk_gb: float
    seconds: float
    basis: str  # what the time figure rests on, in words

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def long_cpu_run(self, device: str) -> bool:
        return device == "cpu" and self.seconds > LONG_RUN_SECONDS


def estimate(
    backend: str, calibration_cost: float, device: str, model_bytes: int, parameters: int, samples: int, seq_len: int
) -> Estimate:
    """`calibration_cost`: the method's seconds per parameter per calibration token on a CPU (0 for a
    data-free method, or a backend that does not calibrate)."""
    tokens = samples * seq_len if calibration_cost > 0 else 0
    calibration = calibration_cost * parameters * tokens
    basis = "measured CPU costs"
    if device != "cpu" and calibration:
        calibration /= GPU_CALIBRATION_SPEEDUP
        basis = "measured CPU costs; the GPU calibration time is a rough guess"
    seconds = FIXED_SECONDS[backend] + model_bytes / 1e9 * SECONDS_PER_GB[backend] + calibration
    return Estimate(
        model_gb=round(model_bytes / 1e9, 3),
        parameters=parameters,
        calibration_tokens=tokens,
        peak_memory_gb=round((model_bytes * MEMORY_FACTOR[backend] + STREAMING_BYTES) / 1e9, 3),
        disk_gb=round(model_bytes / 1e9, 3),
        seconds=round(seconds, 1),
        basis=basis,
    )


def duration(seconds: float) -> str:
    """`42 s`, `12 min`, `3.5 h`: how a person reads a duration."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
