"""BenchmarkRunner: load time, prefill latency, decode throughput, peak memory, size on disk.

Every timing has warm-up runs that are discarded and repeated runs reported as median and spread
(min, max), because a single CPU timing on a shared machine says little; when the spread stays
wide, more runs are added (up to three times as many) before the median is taken. Model memory is
measured after the first forward pass: compressed-tensors decompresses quantized weights then on
CPU, and what a model holds before that is not what it holds while it serves. The result records
the environment (device, threads, library versions) and whether quantized kernels were real or
simulated, because a tokens/s figure means nothing without them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .cpus import compute_threads, torch_threads
from .errors import UnavailableError, UsageError
from .logs import third_party_output
from .memory import peak_rss
from .progress import ProgressCallback, ProgressEvent, no_progress
from .results import BenchmarkResult, Timing
from .weights import WeightLoader


class BenchmarkRunner:
    def __init__(
        self,
        model: str,
        *,
        batch_sizes: tuple[int, ...] = (1, 4),
        seq_lens: tuple[int, ...] = (128, 512),
        new_tokens: int = 32,
        warmup: int = 1,
        repeats: int = 5,
        device: str = "cpu",
        storage_options: Mapping[str, str] | None = None,
        progress: ProgressCallback = no_progress,
    ) -> None:
        self.model_url = model
        self.batch_sizes, self.seq_lens, self.new_tokens = batch_sizes, seq_lens, new_tokens
        self.warmup, self.repeats, self.device = warmup, repeats, device
        self.storage_options, self.progress = storage_options, progress

    def run(self) -> BenchmarkResult:
        _check_device(self.device)
        with torch_threads(compute_threads(helper_threads=0)) as threads:
            return self._run(threads)

    def _run(self, threads: int) -> BenchmarkResult:
        with WeightLoader(self.model_url, self.storage_options) as loader:
            size = _size_on_disk(loader)
            made = loader.reader.manifest.created_by
            method, backend, note = made.method, made.backend or "-", made.note
            quantize_seconds = loader.reader.manifest.quantize_seconds
            started = time.perf_counter()
            model: Any = loader.build_model()
            torch.nn.Module.to(model, self.device)
            load_seconds = time.perf_counter() - started
        vocab = int(model.config.vocab_size)
        max_positions = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        result = BenchmarkResult(
            self.model_url,
            self.device,
            size,
            round(load_seconds, 3),
            method=method,
            backend=backend,
            note=note,
            quantize_seconds=quantize_seconds,
        )
        result.environment = environment(self.device, threads, method)
        steps = len(self.batch_sizes) * (len(self.seq_lens) + 1)
        done = 0
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad(), third_party_output("transformers", stdout=False):
            for batch in self.batch_sizes:
                for seq_len in self.seq_lens:
                    length = min(seq_len, max_positions)
                    ids = torch.randint(0, vocab, (batch, length), generator=generator).to(self.device)
                    result.prefill_seconds[f"{batch}x{length}"] = self._time(functools.partial(model, ids))
                    if not result.model_memory_bytes:  # after a forward pass: see the module docstring
                        result.model_memory_bytes = _model_bytes(model)
                    done += 1
                    self.progress(ProgressEvent("benchmark", f"prefill {batch}x{length}", done, steps))
                prompt = torch.randint(0, vocab, (batch, 16), generator=generator).to(self.device)
                seconds = self._time(
                    functools.partial(
                        model.generate,
                        prompt,
                        max_new_tokens=self.new_tokens,
                        min_new_tokens=self.new_tokens,
                        do_sample=False,
                        pad_token_id=model.config.eos_token_id or 0,
                    )
                )
                result.decode_tokens_per_second[str(batch)] = Timing(
                    round(batch * self.new_tokens / seconds.median, 2),
                    round(batch * self.new_tokens / seconds.maximum, 2),
                    round(batch * self.new_tokens / seconds.minimum, 2),
                    seconds.runs,
                )
                done += 1
                self.progress(ProgressEvent("benchmark", f"decode batch {batch}", done, steps))
        result.peak_host_rss_bytes = peak_rss()
        if self.device.startswith("cuda"):
            result.peak_gpu_allocated_bytes = int(torch.cuda.max_memory_allocated())
        return result

    def _time(self, action: Callable[[], Any]) -> Timing:
        for _ in range(self.warmup):
            action()
        samples: list[float] = []
        while len(samples) < self.repeats or (
            len(samples) < MORE_RUNS_FACTOR * self.repeats and Timing.of(samples).spread > WIDE_SPREAD
        ):
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            action()
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            samples.append(time.perf_counter() - started)
        return Timing.of(samples)


# A spread (max - min) / median above 25% adds runs, up to three times the asked-for repeats.
WIDE_SPREAD = 0.25
MORE_RUNS_FACTOR = 3


def _model_bytes(model: Any) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def environment(device: str, threads: int, method: str) -> dict[str, str]:
    """What a timing depends on, for the report: device, threads, versions, real or simulated kernels."""
    import transformers

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        kernels = "real: compressed-tensors GPU kernels" if method != "none" else "native"
    else:
        name = _cpu_name()
        kernels = (
            "simulated: weights decompressed on CPU (no int8/fp8 kernels), speed and memory are the dequantized model's"
            if method != "none"
            else "native"
        )
    return {
        "device": device,
        "device_name": name,
        "torch_threads": str(threads),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "kernels": kernels,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "cpu")
    except OSError:
        return "cpu"


def _size_on_disk(loader: WeightLoader) -> int:
    return sum(loader.reader.folder.child(shard).size() for shard in loader.reader.manifest.shards)


def _check_device(device: str) -> None:
    """A device this host does not have is unavailable (69), not a crash deep inside torch."""
    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise UsageError(f"--device {device!r} is unknown: use cpu or cuda (cuda:N)")
    number = device.partition(":")[2]
    index = int(number) if number.isdigit() else 0
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise UnavailableError(f"--device {device} was asked for but this host has no such CUDA GPU: use --device cpu")
