"""Byte digests of every method's output on the embedded model: proof that a refactoring changed nothing.

    python bench/method_digests.py record bench/results/method_digests.json
    python bench/method_digests.py check  bench/results/method_digests.json [--exact]

Each (backend, method) quantizes examples/tiny-llama (AngelSlim on CPU through the adapter, the
calibrated methods with examples/data/calibration.jsonl), is exported to a Hugging Face folder,
and every file of that folder is hashed. `check` prints the differences and exits 1 on any.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "pkg")]
# AngelSlim records the model's path in angelslim_config.json (parquant writes the source URL
# there): the same work folder on every run, so that file's bytes compare too.
WORK = Path("/tmp/parquant-method-digests")

RUNS = [
    ("ptq", "int8-weight"),
    ("ptq", "int8-dynamic"),
    ("ptq", "fp8-dynamic"),
    ("ptq", "int4-rtn"),
    ("ptq", "int4-rtn-asym"),
    ("angelslim", "fp8-static"),
    ("angelslim", "fp8-dynamic"),
    ("angelslim", "int8-dynamic"),
    ("angelslim", "int4-gptq"),
    ("angelslim", "int4-awq"),
    ("ptq", "fp8-block"),
    ("ptq", "int4-packed"),
    ("angelslim", "int4-gptaq"),
    ("angelslim", "w4a8-fp8"),
]


# AngelSlim's GPTQ-family methods compute on the CPU with results that differ from one machine to
# another (measured: the same commit gave other bytes on another host); the others are exact.
MACHINE_DEPENDENT = {("angelslim", "int4-gptq"), ("angelslim", "int4-gptaq"), ("angelslim", "int4-awq")}


def digests(work: Path, runs: list[tuple[str, str]] = RUNS) -> dict[str, dict[str, str]]:
    import parquant

    assert Path(parquant.__file__).is_relative_to(REPO), f"{parquant.__file__} is not this checkout's"
    from parquant.quant.config import load_config
    from parquant.quant.methods import get_method
    from parquant.stages.hf_export import export_checkpoint
    from parquant.stages.hf_import import import_checkpoint
    from parquant.stages.quantize import quantize

    model = str(work / "model")
    import_checkpoint(str(REPO / "examples" / "tiny-llama"), model)
    found: dict[str, dict[str, str]] = {}
    for backend, method in runs:
        flags: dict[str, object] = {"backend": backend, "method": method, "fallback": False}
        if get_method(method).calibrated:
            flags.update(
                {
                    "calibration.data": str(REPO / "examples" / "data" / "calibration.jsonl"),
                    "calibration.num_samples": 8,
                    "calibration.seq_len": 64,
                }
            )
        output, folder = work / f"{backend}-{method}", work / f"{backend}-{method}-hf"
        quantize(model, str(output), load_config(flags=flags, environ={}))
        export_checkpoint(str(output), str(folder))
        found[f"{backend} {method}"] = {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.iterdir())
            if path.is_file() and not path.name.startswith(".")
        }
        print(f"{backend} {method}: {len(found[f'{backend} {method}'])} files", file=sys.stderr)
    return found


def main() -> int:
    action, path = sys.argv[1], Path(sys.argv[2])
    # --exact: only the methods whose bytes are the same on every machine (the suite's golden test)
    runs = [run for run in RUNS if run not in MACHINE_DEPENDENT] if "--exact" in sys.argv[3:] else RUNS
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    try:
        found = digests(WORK, runs)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    if action == "record":
        path.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
        return 0
    expected = {run: files for run, files in json.loads(path.read_text()).items() if run in found}
    differences = [
        f"{run} {name}: {expected.get(run, {}).get(name)} -> {found.get(run, {}).get(name)}"
        for run in sorted(set(expected) | set(found))
        for name in sorted(set(expected.get(run, {})) | set(found.get(run, {})))
        if expected.get(run, {}).get(name) != found.get(run, {}).get(name)
    ]
    print("\n".join(differences) or f"all {sum(len(v) for v in found.values())} files identical")
    return 1 if differences else 0


if __name__ == "__main__":
    raise SystemExit(main())
