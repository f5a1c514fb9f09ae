"""`benchmark` stage honesty: its figures against a direct transformers timing of the same model.

A ~40M-parameter Llama (random bf16 weights) is saved by transformers and imported. In one process,
with the same torch thread count (the one the stage sets and reports), side by side:
  parquant: `BenchmarkRunner` (batch 1, prefill 128 tokens, decode 32 new tokens, median of >= 5)
  direct:   `from_pretrained` of the HF folder, then the same `model(ids)` and `model.generate`
            calls timed by hand (one warm-up, median of 7)
alternating three times (the median of each side's three figures: run one after the other, the
second side measured 20% apart on this machine whichever it was). Targets: decode tokens/s and
prefill latency within 10% of the direct figures.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "pkg"), str(REPO / "bench")]

from figures import Figure, table  # noqa: E402
from quantize_bench import make_llama  # noqa: E402

NEW_TOKENS, PROMPT, PREFILL = 32, 16, 128


def direct(folder: Path) -> tuple[float, float]:
    """(decode tokens/s, prefill seconds) timed by hand on transformers' own load of the folder."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto").eval()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 32000, (1, PREFILL), generator=generator)
    prompt = torch.randint(0, 32000, (1, PROMPT), generator=generator)

    def timed(action: object, runs: int = 7) -> float:
        action()  # type: ignore[operator]
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            action()  # type: ignore[operator]
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    with torch.no_grad():
        prefill = timed(lambda: model(ids))
        decode = timed(
            lambda: model.generate(
                prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
            )
        )
    return NEW_TOKENS / decode, prefill


def figures(work: Path) -> list[Figure]:
    import torch

    from parquant.benchmark import BenchmarkRunner
    from parquant.cpus import compute_threads
    from parquant.stages.hf_import import import_checkpoint

    make_llama(work / "hf", hidden=512, intermediate=1536, layers=6, heads=8)
    import_checkpoint(str(work / "hf"), str(work / "pq"))
    threads = compute_threads(helper_threads=0)
    ours: list[tuple[float, float]] = []
    theirs: list[tuple[float, float]] = []
    spreads: list[tuple[float, float]] = []
    for _ in range(3):
        result = BenchmarkRunner(
            str(work / "pq"), batch_sizes=(1,), seq_lens=(PREFILL,), new_tokens=NEW_TOKENS, repeats=5
        ).run()
        decode, prefill = result.decode_tokens_per_second["1"], result.prefill_seconds[f"1x{PREFILL}"]
        ours.append((decode.median, prefill.median))
        spreads.append((decode.spread, prefill.spread))
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            theirs.append(direct(work / "hf"))
        finally:
            torch.set_num_threads(previous)
    ours_decode, ours_prefill = (statistics.median(x) for x in zip(*ours, strict=True))
    tokens_per_second, prefill = (statistics.median(x) for x in zip(*theirs, strict=True))
    decode_spread, prefill_spread = (max(x) for x in zip(*spreads, strict=True))
    return [
        Figure(
            "6 benchmark honesty",
            "decode tokens/s, benchmark stage vs direct transformers generate (difference)",
            100 * abs(ours_decode / tokens_per_second - 1),
            10.0,
            False,
            "%",
            f"{ours_decode:.1f} vs {tokens_per_second:.1f} tok/s, {threads} threads, "
            f"stage's spread up to {decode_spread:.0%}",
        ),
        Figure(
            "6 benchmark honesty",
            f"prefill 1x{PREFILL} latency, benchmark stage vs direct forward (difference)",
            100 * abs(ours_prefill / prefill - 1),
            10.0,
            False,
            "%",
            f"{ours_prefill * 1000:.1f} vs {prefill * 1000:.1f} ms, stage's spread up to {prefill_spread:.0%}",
        ),
    ]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="parquant-bbench-") as folder:
        measured = figures(Path(folder))
    print(table(measured))
    sys.exit(0 if all(f.passed for f in measured) else 1)
