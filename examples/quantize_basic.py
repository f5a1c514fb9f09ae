"""Basic quantization through the Python API: HF folder -> Parquet -> int8-weight -> validated -> HF folder.

    python examples/quantize_basic.py [WORK_FOLDER]      (default out/examples/basic)

The same five steps as docs/quickstart.md's commands; every function is a stage of the CLI.
"""

import sys
from pathlib import Path

from parquant.quant.config import load_config
from parquant.stages.hf_export import export_checkpoint
from parquant.stages.hf_import import import_checkpoint
from parquant.stages.quantize import quantize
from parquant.stages.validate import validate
from parquant.validate import gate

EXAMPLES = Path(__file__).resolve().parent
work = Path(sys.argv[1] if len(sys.argv) > 1 else "out/examples/basic")

import_checkpoint(str(EXAMPLES / "tiny-llama"), str(work / "model"))
quantize(str(work / "model"), str(work / "int8"), load_config(flags={"method": "int8-weight"}, environ={}))
result = validate(str(work / "model"), str(work / "int8"), str(EXAMPLES / "data" / "eval.txt"), max_tokens=1024)
print(result.summary())
gate(result)  # exit 79 (PrecisionGateError) below --min-cosine / --max-ppl-ratio
export_checkpoint(str(work / "int8"), str(work / "int8-hf"))
print(f"transformers loads {work / 'int8-hf'} (compressed-tensors)")
