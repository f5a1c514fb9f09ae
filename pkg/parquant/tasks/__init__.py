"""Task accuracy through lm-evaluation-harness, on small offline subsets shipped in `data/`.

No hub is reachable, so each task is a local lm_eval task config (written to a temporary folder,
pointing at the shipped jsonl) run against an already-built transformers model through lm_eval's
HFLM wrapper. The subsets are small (data/README.md): they catch a broken model and large drops,
not half-point differences.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UnavailableError, UsageError

log = logging.getLogger("parquant")
DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    data: str
    metric: str
    config: str  # lm_eval task YAML; @DATA@ stands for the data file's path


def _multiple_choice(task: str, prompt: str, choices: str = '"{{choices}}"') -> str:
    return f"""task: parquant_{task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: "@DATA@"
test_split: test
output_type: multiple_choice
doc_to_text: "{prompt}"
doc_to_choice: {choices}
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


_MMLU_PROMPT = (
    "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"
)
_GSM8K = """task: parquant_gsm8k
dataset_path: json
dataset_kwargs:
  data_files:
    test: "@DATA@"
test_split: test
output_type: generate_until
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: answer
generation_kwargs:
  until: ["Question:", "\\n\\n"]
  max_gen_toks: 96
  do_sample: false
filter_list:
  - name: flexible-extract
    filter:
      - function: regex
        regex_pattern: "(-?[0-9][0-9,]*\\\\.?[0-9]*)"
        group_select: -1
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_punctuation: true
    regexes_to_ignore: [","]
"""

TASKS = {
    "mmlu": TaskSpec("mmlu", "mmlu.jsonl", "acc,none", _multiple_choice("mmlu", _MMLU_PROMPT, '["A", "B", "C", "D"]')),
    "general_knowledge": TaskSpec(
        "general_knowledge",
        "general_knowledge.jsonl",
        "acc,none",
        _multiple_choice("general_knowledge", "Q: {{question}}\\nA:"),
    ),
    "gsm8k": TaskSpec("gsm8k", "gsm8k.jsonl", "exact_match,flexible-extract", _GSM8K),
}


def parse_tasks(text: str | None) -> list[str]:
    names = [t.strip() for t in (text or "").split(",") if t.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise UsageError(f"unknown task(s) {', '.join(unknown)}: choose from {', '.join(TASKS)}")
    return names


def run_tasks(model: Any, tokenizer: Any, names: list[str], limit: int | None = None) -> dict[str, float]:
    """Accuracy of `model` on each named task (0..1)."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UnavailableError("task accuracy needs lm-evaluation-harness: pip install lm_eval") from None
    with tempfile.TemporaryDirectory(prefix="parquant-tasks-") as folder:
        for name in names:
            spec = TASKS[name]
            (Path(folder) / f"{name}.yaml").write_text(spec.config.replace("@DATA@", str(DATA / spec.data)))
        manager = TaskManager(include_path=folder, include_defaults=False)
        wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, device=str(model.device))
        results = simple_evaluate(
            model=wrapped,
            tasks=[f"parquant_{n}" for n in names],
            task_manager=manager,
            limit=limit,
            num_fewshot=0,
            log_samples=False,
            verbosity="ERROR",
        )
    return {name: round(float(results["results"][f"parquant_{name}"][TASKS[name].metric]), 4) for name in names}
