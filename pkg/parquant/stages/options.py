"""Every stage's options: one dataclass per stage, the one description of what a stage takes.

The CLI builds its parsers from these (argparse-dataclass reads the field metadata: flags, help,
types); a pipeline spec's stage entries are checked against them (`check_params`); the pipeline
and the Kubernetes executor turn an entry into the argv `parquant <stage>` takes (`stage_argv`).
No list of option names exists anywhere else. The library never parses argv: these are data.
"""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..quant import methods

SIZE_SUFFIXES = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def size(text: str) -> int:
    """'64MiB' -> 67108864; plain integers are bytes."""
    cleaned = text.strip().upper()
    number = cleaned.rstrip("KMGIB")
    suffix = cleaned[len(number) :]
    try:
        return int(float(number) * SIZE_SUFFIXES[suffix])
    except (KeyError, ValueError):
        raise UsageError(f"{text!r} is not a size (e.g. 64MiB, 2GB, 1048576)") from None


@dataclass(kw_only=True)
class CommonOptions:
    log_format: str = field(
        default="auto",
        metadata={
            "choices": ["auto", "text", "json"],
            "help": "log lines as text (TTY) or JSON (not a TTY, e.g. in a Pod); auto picks by TTY",
        },
    )
    log_level: str = field(
        default="info",
        metadata={"choices": ["debug", "info", "warning", "error"], "help": "least severe messages shown (info)"},
    )
    quiet: bool = field(default=False, metadata={"help": "no progress bars or progress lines"})
    storage_option: list[str] = field(
        default_factory=list,
        metadata={
            "nargs": "+",
            "metavar": "KEY=VALUE",
            "help": "fsspec/s3fs option, e.g. endpoint_url=http://127.0.0.1:9000 region=eu-west-1 "
            "(credentials come from the standard AWS_* variables, never from flags)",
        },
    )


@dataclass(kw_only=True)
class WriteFlags:
    force: bool = field(default=False, metadata={"help": "overwrite an existing output (also redo finished work)"})
    format_version: int = field(
        default=2,
        metadata={"choices": [1, 2], "help": "Parquet model format to write: 2 (1 is read but no longer written)"},
    )
    chunk_size: int = field(
        default=16 * 2**20, metadata={"type": size, "help": "max bytes per stored chunk (<= 64MiB, default 16MiB)"}
    )
    shard_size: int = field(
        default=2 * 2**30, metadata={"type": size, "help": "max bytes per Parquet shard file (default 2GiB)"}
    )
    compression: str = field(
        default="none",
        metadata={
            "choices": ["none", "zstd", "snappy", "lz4", "gzip", "brotli"],
            "help": "Parquet compression of tensor data (default none; zstd saves little on weights)",
        },
    )


@dataclass(kw_only=True)
class FanOutFlags:
    """Shards written by N workers at once (stages/fanout.py): an Indexed Job's pods, or local processes."""

    shard_count: int | None = field(
        default=None,
        metadata={
            "type": int,
            "help": "fan-out: N workers run in parallel, each writing the shards whose number is its "
            "index modulo N; a last run without this option checks them and writes the manifest (docs/deploy.md)",
        },
    )
    shard_index: int | None = field(
        default=None,
        metadata={"type": int, "help": "fan-out: this worker's index, 0..N-1 (default: $JOB_COMPLETION_INDEX)"},
    )
    workers: int = field(
        default=1,
        metadata={"type": int, "help": "run N fan-out workers as local processes, then commit (default 1)"},
    )


@dataclass(kw_only=True)
class ImportOptions(CommonOptions, WriteFlags, FanOutFlags):
    source: str = field(metadata={"args": ["source"], "help": "HF checkpoint folder URL (local path or s3://)"})
    output: str = field(metadata={"args": ["-o", "--output"], "help": "Parquet model folder URL to write"})
    strict: bool = field(default=False, metadata={"help": "refuse checkpoints with NaN/Inf weights (default: warn)"})


@dataclass(kw_only=True)
class ExportOptions(CommonOptions):
    model: str = field(metadata={"args": ["model"], "help": "Parquet model folder URL"})
    output: str = field(metadata={"args": ["-o", "--output"], "help": "HF checkpoint folder URL to write"})
    force: bool = field(default=False, metadata={"help": "overwrite an existing output"})
    max_shard_size: int = field(
        default=5 * 10**9,
        metadata={
            "type": size,
            "help": "max bytes per safetensors file when the source layout cannot be kept (default 5GB)",
        },
    )


@dataclass(kw_only=True)
class InspectOptions(CommonOptions):
    model: str = field(metadata={"args": ["model"], "help": "Parquet model folder URL (or a .parquet file)"})
    json: bool = field(default=False, metadata={"help": "print the full summary as JSON"})


@dataclass(kw_only=True)
class QuantizeOptions(CommonOptions, WriteFlags, FanOutFlags):
    model: str = field(metadata={"args": ["model"], "help": "Parquet model folder URL to quantize"})
    output: str = field(metadata={"args": ["-o", "--output"], "help": "Parquet model folder URL to write"})
    config: str | None = field(
        default=None,
        metadata={
            "type": str,
            "help": "YAML QuantizationConfig (keys: method, recipe, backend, group_size, ignore, calibration, "
            "device, fallback, angelslim); flags and PARQUANT_* variables override it",
        },
    )
    method: str | None = field(
        default=None,
        metadata={
            "args": ["--method", "--angelslim-method"],
            "type": str,
            "help": methods.help_text(),
        },
    )
    recipe: str | None = field(
        default=None,
        metadata={
            "type": str,
            "help": "a recipe file (YAML) instead of --method: groups of (targets, compressed-tensors scheme) for "
            "per-layer mixes, plus ignore patterns; checked before any work (docs/recipes.md)",
        },
    )
    backend: str | None = field(
        default=None,
        metadata={
            "type": str,
            "help": "auto (default: AngelSlim when installed and offering the method, else PTQ; for a recipe "
            "file the eligible backend estimated fastest), angelslim, ptq",
        },
    )
    group_size: int | None = field(default=None, metadata={"type": int, "help": "INT4 group size (default 128)"})
    ignore: list[str] | None = field(
        default=None,
        metadata={
            "nargs": "+",
            "type": str,
            "help": "modules kept in full precision: names or globs "
            "(default lm_head *.gate *.router: the head and MoE routers)",
        },
    )
    calibration_data: str | None = field(
        default=None,
        metadata={
            "type": str,
            "help": "calibration texts URL: .jsonl (text | messages | input+output), .txt, .parquet (text)",
        },
    )
    num_samples: int | None = field(default=None, metadata={"type": int, "help": "calibration samples (default 128)"})
    seq_len: int | None = field(
        default=None, metadata={"type": int, "help": "tokens per calibration sample (default 512)"}
    )
    seed: int | None = field(default=None, metadata={"type": int, "help": "calibration sampling seed (default 0)"})
    device: str | None = field(default=None, metadata={"type": str, "help": "auto (default), cuda, cpu"})
    no_fallback: bool = field(
        default=False, metadata={"help": "fail (exit 69) instead of falling back to built-in PTQ or to the CPU"}
    )
    dry_run: bool = field(default=False, metadata={"help": "print the plan and estimates; write nothing"})
    min_quantized_fraction: float = field(
        default=0.0,
        metadata={
            "help": "refuse (exit 69, nothing written) a run that quantizes less than this share of the "
            "parameters not ignored (0..1; e.g. 0.99: no expert left in full precision by a shape the method "
            "cannot take)"
        },
    )
    compare: str | None = field(
        default=None,
        metadata={
            "type": str,
            "help": "comma-separated methods to compare (plus the PTQ INT8 baseline): quantize, validate "
            "and benchmark each into OUTPUT/<method>, write OUTPUT/report",
        },
    )
    eval_text: str | None = field(default=None, metadata={"type": str, "help": "held-out text for --compare"})
    tasks: str | None = field(
        default=None, metadata={"type": str, "help": "--compare: task accuracy too (mmlu, gsm8k, general_knowledge)"}
    )


@dataclass(kw_only=True)
class ValidateOptions(CommonOptions):
    reference: str = field(metadata={"args": ["reference"], "help": "the original Parquet model URL"})
    candidate: str = field(metadata={"args": ["candidate"], "help": "the quantized Parquet model URL"})
    eval_text: str = field(metadata={"help": "held-out text URL (plain UTF-8) for logits and perplexity"})
    seq_len: int = field(default=256, metadata={"help": "tokens per evaluation window (default 256)"})
    max_tokens: int = field(default=4096, metadata={"help": "evaluate at most this many tokens (default 4096)"})
    min_cosine: float = field(default=0.99, metadata={"help": "gate: minimum mean logits cosine (default 0.99)"})
    max_ppl_ratio: float = field(default=1.05, metadata={"help": "gate: maximum perplexity ratio (default 1.05)"})
    tasks: str | None = field(
        default=None,
        metadata={
            "type": str,
            "help": "task accuracy through lm-evaluation-harness on shipped offline subsets: "
            "comma-separated from mmlu, gsm8k, general_knowledge",
        },
    )
    task_limit: int | None = field(default=None, metadata={"type": int, "help": "at most N examples per task"})
    output: str | None = field(
        default=None, metadata={"args": ["-o", "--output"], "type": str, "help": "write the JSON result here"}
    )
    json: bool = field(default=False, metadata={"help": "print the full JSON result instead of the summary"})


@dataclass(kw_only=True)
class BenchmarkOptions(CommonOptions):
    model: str = field(metadata={"args": ["model"], "help": "Parquet model URL"})
    batch_sizes: list[int] = field(
        default_factory=lambda: [1, 4], metadata={"nargs": "+", "type": int, "help": "batch sizes (default 1 4)"}
    )
    seq_lens: list[int] = field(
        default_factory=lambda: [128, 512],
        metadata={"nargs": "+", "type": int, "help": "prefill lengths in tokens (default 128 512)"},
    )
    new_tokens: int = field(default=32, metadata={"help": "decoded tokens per run (default 32)"})
    repeats: int = field(
        default=5,
        metadata={
            "help": "timed runs after one warm-up, more while they spread over a quarter of the median; median reported"
        },
    )
    device: str = field(default="cpu", metadata={"choices": ["cpu", "cuda"], "help": "where to run (default cpu)"})
    output: str | None = field(
        default=None, metadata={"args": ["-o", "--output"], "type": str, "help": "write the JSON result here"}
    )
    json: bool = field(default=False, metadata={"help": "print the full JSON result instead of the summary"})


@dataclass(kw_only=True)
class ReportOptions(CommonOptions):
    results: list[str] = field(
        metadata={
            "args": ["results"],
            "nargs": "+",
            "type": str,
            "help": "result JSON files of validate, benchmark or --compare",
        }
    )
    output: str = field(metadata={"args": ["-o", "--output"], "help": "report folder URL to write"})
    title: str = field(default="parquant comparison", metadata={"help": "report title (default: parquant comparison)"})
    force: bool = field(default=False, metadata={"help": "overwrite an existing report"})


@dataclass(kw_only=True)
class PipelineOptions(CommonOptions):
    spec: str = field(metadata={"args": ["spec"], "help": "pipeline YAML: name, stages (each: stage + its options)"})
    executor: str = field(
        default="local",
        metadata={
            "choices": ["local", "kubernetes"],
            "help": "local: every stage in this process; kubernetes: one Job per stage (see docs/deploy.md)",
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "print each stage's command (kubernetes: and the Jobs it would create); run nothing"},
    )
    force: bool = field(
        default=False,
        metadata={"help": "rerun stages already recorded as done, each with --force (its output redone)"},
    )
    state_dir: str | None = field(
        default=None,
        metadata={"type": str, "help": "local executor: where the resume state lives (default: parquant's cache)"},
    )
    parallel: int = field(
        default=1,
        metadata={
            "type": int,
            "help": "stages run at once where the spec's after: allows it (local: child processes; kubernetes: "
            "concurrent Jobs); default 1, one after another",
        },
    )
    namespace: str | None = field(
        default=None,
        metadata={"type": str, "help": "kubernetes: namespace of the stage Jobs (default: the pod's own)"},
    )
    kubeconfig: str | None = field(
        default=None,
        metadata={"type": str, "help": "kubernetes: kubeconfig file (default: in-cluster ServiceAccount)"},
    )
    job_template: str = field(
        default="/etc/parquant/templates/stage-job.yaml",
        metadata={"help": "kubernetes: the stage Job template (deploy/base/templates)"},
    )
    gpu_job_patch: str | None = field(
        default="/etc/parquant/templates/gpu-patch.yaml",
        metadata={"type": str, "help": "kubernetes: JSON Patch that makes the template a GPU Job (quantize)"},
    )
    cpu_image: str | None = field(
        default=None, metadata={"type": str, "help": "kubernetes: image of CPU stages (default: the template's)"}
    )
    gpu_image: str | None = field(
        default=None, metadata={"type": str, "help": "kubernetes: image of GPU stages (default: the template's)"}
    )
    no_gpu: bool = field(
        default=False, metadata={"help": "kubernetes: run every stage on the CPU template (no GPU nodes)"}
    )
    gpu_schedule_timeout: float = field(
        default=600.0,
        metadata={
            "help": "kubernetes: seconds a GPU pod may stay Unschedulable before the stage is replaced by a "
            "CPU Job (default 600; leave the cluster autoscaler time to add a node)"
        },
    )
    cpu_fallback_backend: str = field(
        default="ptq",
        metadata={
            "choices": ["ptq", "angelslim"],
            "help": "kubernetes: backend of a quantize stage moved to the CPU (default ptq; angelslim runs "
            "AngelSlim on the CPU: slower, same method)",
        },
    )
    poll_seconds: float = field(default=2.0, metadata={"help": "kubernetes: how often Job status is read"})


STAGE_OPTIONS: dict[str, type[CommonOptions]] = {
    "import": ImportOptions,
    "export": ExportOptions,
    "inspect": InspectOptions,
    "quantize": QuantizeOptions,
    "validate": ValidateOptions,
    "benchmark": BenchmarkOptions,
    "report": ReportOptions,
}


def _flags(item: dataclasses.Field[Any]) -> list[str]:
    return list(item.metadata.get("args") or [f"--{item.name.replace('_', '-')}"])


def positional_keys(stage: str) -> tuple[str, ...]:
    """The stage's positional parameters, in order (`model`, `reference candidate`, ...)."""
    return tuple(f.name for f in dataclasses.fields(STAGE_OPTIONS[stage]) if not _flags(f)[0].startswith("-"))


def option_keys(stage: str) -> tuple[str, ...]:
    """Every key a pipeline entry of this stage may set."""
    return tuple(f.name for f in dataclasses.fields(STAGE_OPTIONS[stage]))


def check_params(stage: str, params: Mapping[str, Any]) -> list[str]:
    """What is wrong with a pipeline entry's parameters: unknown keys, missing required ones."""
    known = option_keys(stage)
    problems = [f"unknown key {key!r} (known: {', '.join(known)})" for key in params if key not in known]
    missing = [
        f.name
        for f in dataclasses.fields(STAGE_OPTIONS[stage])
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in params
    ]
    if missing:
        problems.append(f"lacks {', '.join(missing)}")
    return problems


def stage_argv(stage: str, params: Mapping[str, Any]) -> list[str]:
    """The argv `parquant <stage>` takes for these parameters (flags named as the options name them)."""
    fields = {f.name: f for f in dataclasses.fields(STAGE_OPTIONS[stage])}
    args = [stage]
    for key in positional_keys(stage):
        value = params[key]
        args += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    for key, value in params.items():
        if key in positional_keys(stage) or value is None or value is False:
            continue
        flag = next(a for a in _flags(fields[key]) if a.startswith("--"))
        if value is True:
            args.append(flag)
        elif isinstance(value, list):
            args += [flag, *(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    return args
