"""`parquant <stage> ...`: argv -> typed options -> one library call -> exit code.

This is the only place that turns parquant errors into process exit codes (errors.EXIT_CODES).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import argparse_dataclass

from parquant import __version__
from parquant.errors import EXIT_CODES, OutOfMemoryError, ParquantError, UsageError
from parquant.stages.options import (
    BenchmarkOptions,
    CommonOptions,
    ExportOptions,
    ImportOptions,
    InspectOptions,
    PipelineOptions,
    QuantizeOptions,
    ReportOptions,
    ValidateOptions,
)

from .reporting import configure_logging, progress_reporter

log = logging.getLogger("parquant")


class _Parser(argparse_dataclass.ArgumentParser):  # type: ignore[misc]
    """argparse exits 2 on bad usage; parquant's contract says 64, with a one-line message."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}{self._suggestion(message)} (see {self.prog} --help)")

    def _suggestion(self, message: str) -> str:
        """`--methd` -> "did you mean --method?" (argparse of Python 3.11 does not suggest)."""
        if "unrecognized arguments:" not in message:
            return ""
        known = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
        for word in message.split("unrecognized arguments:", 1)[1].split():
            close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.75)
            if word.startswith("-") and close:
                return f"; did you mean {close[0]}?"
        return ""


@dataclass(frozen=True)
class Stage:
    options: type[CommonOptions]
    run: Callable[[Any], int]
    summary: str
    examples: tuple[str, ...] = ()  # shown under --help, on the embedded model (a test runs their parsing)


def _context(options: CommonOptions) -> Any:
    """What a stage gets besides its options: storage options, progress, the executor's environment."""
    from parquant.fs import parse_storage_options
    from parquant.stages.common import StageContext

    return StageContext.from_environment(
        parse_storage_options(options.storage_option),
        progress_reporter(options.log_format, options.quiet),
        os.environ,
    )


def stage_runner(module: str) -> Callable[[Any], int]:
    """The one way a stage runs from the command line: its `run(options, context)` returns a typed
    outcome (outcomes.StageOutcome); the log gets its lines, stdout its text (where it has one and
    --json was not asked for) or its JSON, and a failure it reports (a precision gate) is raised
    like any other error, so its exit code and one-line message come from the same place."""

    def run(options: CommonOptions) -> int:
        stage = importlib.import_module(f"parquant.stages.{module}")
        outcome = stage.run(options, _context(options))
        for line in outcome.log_lines():
            log.info("%s", line)
        as_json = bool(getattr(options, "json", False))  # validate, benchmark, inspect: --json, indented
        text = None if as_json else outcome.text()
        print(text if text is not None else json.dumps(outcome.to_dict(), indent=2 if as_json else None))
        failure = outcome.failure()
        if failure is not None:
            raise failure
        return 0

    return run


def run_pipeline(options: PipelineOptions) -> int:
    from parquant.pipeline import LocalExecutor, PipelineSpec, first_failure, plan_lines

    spec = PipelineSpec.load(options.spec)
    shared = ["--log-format", options.log_format, "--log-level", options.log_level] + (
        ["--quiet"] if options.quiet else []
    )
    if options.dry_run:
        for line in plan_lines(spec):
            print(line)
        if options.executor == "kubernetes":
            import yaml

            from parquant.k8s.executor import planned_jobs

            print(yaml.safe_dump_all(planned_jobs(_kubernetes_settings(options, shared), spec), sort_keys=False))
        return 0
    if options.executor == "kubernetes":
        outcomes = _run_on_kubernetes(options, spec, shared)
    else:
        if options.parallel < 1:
            raise UsageError(f"--parallel {options.parallel} must be 1 or more")
        executor = LocalExecutor(lambda argv: main(argv + shared), options.state_dir, options.parallel)
        outcomes = executor.run(spec, force=options.force)
    for outcome in outcomes:
        log.info(
            "pipeline: %-24s %-8s exit %d  %.1fs", outcome.name, outcome.status, outcome.exit_code, outcome.seconds
        )
    print(json.dumps({"pipeline": spec.name, "stages": [asdict(o) for o in outcomes]}))
    failed = first_failure(outcomes)
    return failed.exit_code if failed else 0


def _kubernetes_settings(options: PipelineOptions, shared: list[str]) -> Any:
    from parquant.k8s import default_namespace
    from parquant.k8s.executor import KubernetesSettings
    from parquant.k8s.jobs import JobTemplates

    gpu_patch = None if options.no_gpu else _template(options.gpu_job_patch)
    return KubernetesSettings(
        namespace=options.namespace or default_namespace(options.kubeconfig),
        templates=JobTemplates.load(_template(options.job_template) or options.job_template, gpu_patch),
        cpu_image=options.cpu_image or None,
        gpu_image=options.gpu_image or None,
        gpu=not options.no_gpu,
        gpu_schedule_timeout=options.gpu_schedule_timeout,
        cpu_fallback_backend=options.cpu_fallback_backend,
        poll_seconds=options.poll_seconds,
        extra_args=shared,
        parallel=options.parallel,
    )


_CHECKOUT_TEMPLATES = Path(__file__).resolve().parents[2] / "deploy" / "base" / "templates"


def _template(path: str | None) -> str | None:
    """A Job template; outside a cluster, where the default /etc/parquant/templates is not mounted,
    the templates of the checkout parquant runs from (so `--dry-run` works on a laptop)."""
    if path and not os.path.exists(path) and path.startswith("/etc/parquant/templates/"):
        local = _CHECKOUT_TEMPLATES / os.path.basename(path)
        if local.exists():
            log.info("using the checkout's Job template %s (%s is not mounted here)", local, path)
            return str(local)
    return path


def _run_on_kubernetes(options: PipelineOptions, spec: Any, shared: list[str]) -> list[Any]:
    from parquant.k8s import connect
    from parquant.k8s.executor import KubernetesExecutor

    executor = KubernetesExecutor(connect(options.kubeconfig), _kubernetes_settings(options, shared))
    try:
        return executor.run(spec, force=options.force)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM when Kubernetes stops the driver pod
        executor.interrupt()
        raise


STAGES: dict[str, Stage] = {
    "import": Stage(
        ImportOptions,
        stage_runner("hf_import"),
        "HF checkpoint folder -> Parquet model",
        ("parquant import examples/tiny-llama -o out/m", "parquant import s3://bucket/hf -o s3://bucket/m"),
    ),
    "export": Stage(
        ExportOptions,
        stage_runner("hf_export"),
        "Parquet model -> HF checkpoint folder (transformers/vLLM)",
        ("parquant export out/m -o out/m-hf",),
    ),
    "quantize": Stage(
        QuantizeOptions,
        stage_runner("quantize"),
        "Parquet model -> quantized Parquet model (AngelSlim or PTQ)",
        (
            "parquant quantize out/m -o out/m-int8 --method int8-weight",
            "parquant quantize out/m -o out/m-fp8 --method fp8-static --calibration-data calib.jsonl",
            "parquant quantize out/m -o out/cmp --compare fp8-dynamic,int4-rtn --eval-text examples/data/eval.txt",
        ),
    ),
    "validate": Stage(
        ValidateOptions,
        stage_runner("validate"),
        "precision of a quantized model vs its reference (gate: exit 79)",
        ("parquant validate out/m out/m-int8 --eval-text examples/data/eval.txt -o out/validate.json",),
    ),
    "benchmark": Stage(
        BenchmarkOptions,
        stage_runner("benchmark"),
        "load time, prefill latency, decode tokens/s, peak memory",
        ("parquant benchmark out/m-int8 --batch-sizes 1 --seq-lens 128 -o out/bench.json",),
    ),
    "report": Stage(
        ReportOptions,
        stage_runner("report"),
        "comparison report (Markdown, JSON, HTML with plots) from results",
        ("parquant report out/validate.json out/bench.json -o out/report",),
    ),
    "inspect": Stage(
        InspectOptions,
        stage_runner("inspect"),
        "show tensors, dtypes, size, quantization, manifest",
        ("parquant inspect out/m",),
    ),
    "pipeline": Stage(
        PipelineOptions,
        run_pipeline,
        "run a YAML list of stages in order (resumable)",
        (
            "parquant pipeline examples/pipelines/demo.yaml",
            "parquant pipeline deploy/base/pipeline.yaml --executor kubernetes --dry-run",
        ),
    ),
}


def _parser(name: str) -> _Parser:
    stage = STAGES[name]
    epilog = "examples:\n" + "\n".join(f"  {example}" for example in stage.examples) if stage.examples else None
    return _Parser(
        stage.options,
        prog=f"parquant {name}",
        description=stage.summary,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def stage_help(name: str) -> str:
    """`parquant <name> --help`, as printed (the docs' CLI reference is made from it)."""
    return str(_parser(name).format_help())


def top_help() -> str:
    """`parquant --help`, as printed (the docs' CLI reference starts with it)."""
    lines = [
        f"parquant {__version__}: compress LLMs whose weights live in Parquet (local or s3://)",
        "",
        "usage: parquant <stage> [options]   (parquant <stage> --help for a stage's options)",
        "",
        "stages:",
    ]
    lines += [f"  {name:<10} {stage.summary}" for name, stage in STAGES.items()]
    lines += ["", "exit codes:"] + [f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items()]
    return "\n".join(lines)


def _merge_repeated(argv: list[str], flag: str) -> list[str]:
    """Let `--storage-option a=1 --storage-option b=2` mean the same as `--storage-option a=1 b=2`."""
    merged: list[str] = []
    values: list[str] = []
    index = 0
    while index < len(argv):
        if argv[index] == flag:
            index += 1
            while index < len(argv) and not argv[index].startswith("-"):
                values.append(argv[index])
                index += 1
            continue
        merged.append(argv[index])
        index += 1
    return merged + ([flag, *values] if values else [])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(top_help())
        return 0 if args else 64
    if args[0] == "--version":
        print(f"parquant {__version__}")
        return 0
    stage = STAGES.get(args[0])
    previous = _on_sigterm(_raise_terminated)
    try:
        if stage is None:
            close = difflib.get_close_matches(args[0], list(STAGES), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(f"unknown stage {args[0]!r}: {hint}choose one of {', '.join(STAGES)} (parquant --help)")
        parser = _parser(args[0])
        options = parser.parse_args(_merge_repeated(args[1:], "--storage-option"))
        configure_logging(options.log_format, options.log_level)
        return stage.run(options)
    except ParquantError as exc:
        return _fail(exc.exit_code, exc.message, args)
    except MemoryError:
        return _fail(OutOfMemoryError.exit_code, "out of memory: run on a node with more memory")
    except Terminated:
        return _fail(TERMINATED_EXIT_CODE, "terminated (SIGTERM): unfinished uploads were aborted; rerun to resume")
    except KeyboardInterrupt:
        return _fail(130, "interrupted; rerun the same command to resume")
    except BrokenPipeError:
        # The reader of our output went away (`parquant inspect M | head`): nothing to report.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        reason = " ".join(str(exc).split())[:200]
        return _fail(
            70,
            f"internal error ({type(exc).__name__}: {reason}): please report it with the log "
            "(--log-level debug shows the traceback)",
        )
    finally:
        _on_sigterm(previous)


TERMINATED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell and Kubernetes report for it


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Kubernetes sends to stop a pod), unwound like Ctrl-C: every open upload is
    aborted and every partial local file removed on the way out."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def _on_sigterm(handler: Any) -> Any:
    """Install `handler` for SIGTERM where that is possible (the main thread); returns the old one."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _fail(code: int, message: str, argv: Sequence[str] = ()) -> int:
    from .reporting import redact

    requested = _requested_log_format(argv)
    if requested != "auto" or not logging.getLogger("parquant").handlers:
        configure_logging(requested, "info")
    log.error("%s", redact(message), extra={"fields": {"exit_code": code}})
    return code


def _requested_log_format(argv: Sequence[str]) -> str:
    """`--log-format X` from raw argv: an error found while parsing must still honour it."""
    for index, word in enumerate(argv):
        if word == "--log-format" and index + 1 < len(argv):
            return argv[index + 1]
        if word.startswith("--log-format="):
            return word.split("=", 1)[1]
    return "auto"


def entry_point() -> None:
    code = main()
    if code != 0:
        # A failed run may leave objects whose finalizers would talk to storage that is gone
        # (an s3fs upload retried through a dead event loop hangs for ever): exit now, on purpose.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)
