"""PrecisionValidator: how far a quantized (candidate) model is from its reference.

Two levels, both needing no GPU library:
- weights: every linear layer of the reference against the candidate's weight, dequantized by
  parquant itself (FP8/INT8 compressed-tensors, GPTQ, AWQ): cosine, relative error, max abs error;
- model: both models run on held-out text in windows of `seq_len` tokens: logits cosine per token
  (mean and the worst tokens, never hidden in a mean), top-1 agreement, KL(reference || candidate),
  perplexity of both and their ratio.

Thresholds turn the result into a gate (PrecisionGateError, exit 79).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping
from typing import Any

import torch

from .errors import InvalidInputError
from .fs import resolve
from .logs import third_party_output
from .progress import ProgressCallback, ProgressEvent, no_progress
from .quant.dequant import dequantize_module
from .results import TensorMetric, Thresholds, ValidationResult, WorstToken
from .weights import WeightLoader

_SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")


class PrecisionValidator:
    def __init__(
        self,
        reference: str,
        candidate: str,
        eval_text: str,
        *,
        seq_len: int = 256,
        max_tokens: int = 4096,
        thresholds: Thresholds | None = None,
        storage_options: Mapping[str, str] | None = None,
        progress: ProgressCallback = no_progress,
        tasks: list[str] | None = None,
        task_limit: int | None = None,
    ) -> None:
        self.reference_url, self.candidate_url = reference, candidate
        self.eval_text_url = eval_text
        self.seq_len, self.max_tokens = seq_len, max_tokens
        self.thresholds = thresholds or Thresholds()
        self.storage_options = storage_options
        self.progress = progress
        self.tasks, self.task_limit = list(tasks or []), task_limit

    def run(self) -> ValidationResult:
        started = time.monotonic()
        with (
            WeightLoader(self.reference_url, self.storage_options) as reference,
            WeightLoader(self.candidate_url, self.storage_options) as candidate,
        ):
            _check_same_architecture(reference.config(), candidate.config())
            tensors = self._tensor_metrics(reference, candidate)
            ids, tokenizer = self._eval_tokens(reference)
            model_metrics = self._model_metrics(reference, candidate, ids, tokenizer)
            made = candidate.reader.manifest.created_by
            quantize_seconds = candidate.reader.manifest.quantize_seconds
        result = ValidationResult(
            quantize_seconds=quantize_seconds,
            note=made.note,
            method=made.method,
            backend=made.backend or "-",
            reference=self.reference_url,
            candidate=self.candidate_url,
            tensors=tensors,
            worst_tensors=sorted(tensors, key=lambda t: t.cosine)[:5],
            seconds=round(time.monotonic() - started, 2),
            thresholds=self.thresholds,
            passed=True,
            **model_metrics,
        )
        if result.logits_cosine_mean < self.thresholds.min_cosine:
            result.failures.append(
                f"mean logits cosine {result.logits_cosine_mean:.5f} < --min-cosine {self.thresholds.min_cosine}"
            )
        if result.perplexity_ratio > self.thresholds.max_ppl_ratio:
            result.failures.append(
                f"perplexity ratio {result.perplexity_ratio:.4f} > --max-ppl-ratio {self.thresholds.max_ppl_ratio}"
            )
        result.passed = not result.failures
        return result

    # -- weights ----------------------------------------------------------------------------------
    def _tensor_metrics(self, reference: WeightLoader, candidate: WeightLoader) -> list[TensorMetric]:
        quantization = candidate.config().get("quantization_config") or {}
        candidate_names = set(candidate.names())
        modules = [
            n.removesuffix(".weight")
            for n in reference.names()
            if n.endswith(".weight") and len(reference.spec(n).shape) == 2
        ]
        metrics = []
        for index, module in enumerate(modules, 1):
            needed = [n for n in candidate_names if n.startswith(module + ".")]
            if not needed:
                raise InvalidInputError(f"candidate {self.candidate_url} lacks tensor {module}.weight of the reference")
            loaded = {n: candidate.load(n) for n in needed}
            restored = dequantize_module(module, loaded, quantization)
            reference_weight = reference.load(f"{module}.weight")
            original = reference_weight.float()
            if restored is None or restored.shape != original.shape:
                raise InvalidInputError(f"candidate tensor {module} has a different shape than the reference")
            # The weight as the candidate computes with it: in the reference's dtype (validate runs
            # it so), compared in float64. Rounding to the scales' dtype instead added 5% relative
            # error on one expert of a float32 model with bf16 scales.
            metrics.append(_compare(module + ".weight", original, restored.to(reference_weight.dtype)))
            self.progress(ProgressEvent("weights", module, index, len(modules)))
        return metrics

    # -- model ------------------------------------------------------------------------------------
    def _eval_tokens(self, reference: WeightLoader) -> tuple[torch.Tensor, Any]:
        location = resolve(self.eval_text_url, self.storage_options)
        if not location.exists():
            from .errors import InputNotFoundError

            raise InputNotFoundError(f"evaluation text {self.eval_text_url} not found")
        text = location.read_bytes().decode("utf-8", errors="replace")
        if not text.strip():
            raise InvalidInputError(f"evaluation text {self.eval_text_url} is empty")
        tokenizer = reference.tokenizer()
        ids = tokenizer(text, return_tensors="pt").input_ids[0][: self.max_tokens]
        if len(ids) < self.seq_len + 1:
            raise InvalidInputError(
                f"evaluation text {self.eval_text_url} has {len(ids)} tokens, fewer than one sequence of "
                f"--seq-len {self.seq_len}: give more text or a smaller --seq-len"
            )
        return ids, tokenizer

    def _model_metrics(
        self, reference: WeightLoader, candidate: WeightLoader, ids: torch.Tensor, tokenizer: Any
    ) -> dict[str, Any]:
        ref_model = reference.build_model()
        # like with like: the candidate computes in the reference's dtype (its scales' dtype made
        # fp8-static run in float32 against a bf16 reference)
        cand_model = candidate.build_model(dtype=ref_model.dtype)
        simulation, simulated = _activation_simulation(candidate, cand_model)
        tasks = self._task_accuracy(ref_model, cand_model, tokenizer)
        windows = [ids[s : s + self.seq_len] for s in range(0, len(ids) - self.seq_len + 1, self.seq_len)]
        cosines, agree, kl, nll_ref, nll_cand = [], 0, 0.0, 0.0, 0.0
        positions = []
        # compressed-tensors decompresses on the first forward, with a progress bar: debug log
        with torch.no_grad(), third_party_output("transformers", stdout=False):
            for index, window in enumerate(windows, 1):
                ref_logits = ref_model(window.unsqueeze(0)).logits[0].float()
                with simulation:
                    cand_logits = cand_model(window.unsqueeze(0)).logits[0].float()
                if not bool(torch.isfinite(cand_logits).all()):
                    raise InvalidInputError(f"candidate {self.candidate_url} produced non-finite logits: it is broken")
                if not bool(torch.isfinite(ref_logits).all()):
                    raise InvalidInputError(f"reference {self.reference_url} produced non-finite logits")
                # float64: a float32 cosine of two identical rows can come out as 1.0000001
                cosines.append(torch.nn.functional.cosine_similarity(ref_logits.double(), cand_logits.double(), dim=-1))
                positions.append(torch.arange(len(window)) + (index - 1) * self.seq_len)
                agree += int((ref_logits.argmax(-1) == cand_logits.argmax(-1)).sum())
                ref_log, cand_log = ref_logits.log_softmax(-1), cand_logits.log_softmax(-1)
                kl += float((ref_log.exp() * (ref_log - cand_log)).sum(-1).sum())
                targets = window[1:]
                nll_ref -= float(ref_log[:-1].gather(1, targets.unsqueeze(1)).sum())
                nll_cand -= float(cand_log[:-1].gather(1, targets.unsqueeze(1)).sum())
                self.progress(ProgressEvent("model", f"window {index}", index, len(windows)))
        all_cosines, all_positions = torch.cat(cosines), torch.cat(positions)
        tokens = len(all_cosines)
        predicted = tokens - len(windows)
        worst = torch.argsort(all_cosines)[:5]
        ppl_ref, ppl_cand = math.exp(nll_ref / predicted), math.exp(nll_cand / predicted)
        return {
            "logits_cosine_mean": round(float(all_cosines.mean()), 6),
            "logits_cosine_worst": round(float(all_cosines.min()), 6),
            "worst_tokens": [
                WorstToken(
                    int(all_positions[i]),
                    tokenizer.decode([int(ids[all_positions[i]])]),
                    round(float(all_cosines[i]), 6),
                )
                for i in worst
            ],
            "top1_agreement": round(agree / tokens, 6),
            "kl_divergence": round(kl / tokens, 6),
            "perplexity_reference": round(ppl_ref, 4),
            "perplexity_candidate": round(ppl_cand, 4),
            "perplexity_ratio": round(ppl_cand / ppl_ref, 6),
            "tokens_evaluated": tokens,
            "tasks": tasks,
            "activation_simulation": simulated,
        }

    def _task_accuracy(self, reference: Any, candidate: Any, tokenizer: Any) -> dict[str, dict[str, float]]:
        if not self.tasks:
            return {}
        from .tasks import run_tasks

        self.progress(ProgressEvent("tasks", ", ".join(self.tasks), 0, 2))
        ref = run_tasks(reference, tokenizer, self.tasks, self.task_limit)
        self.progress(ProgressEvent("tasks", "reference", 1, 2))
        cand = run_tasks(candidate, tokenizer, self.tasks, self.task_limit)
        self.progress(ProgressEvent("tasks", "candidate", 2, 2))
        return {name: {"reference": ref[name], "candidate": cand[name]} for name in self.tasks}


def _activation_simulation(candidate: WeightLoader, model: Any) -> tuple[Any, str]:
    """(a context the candidate runs in, what it simulates). transformers' compressed-tensors path
    quantizes activations itself; a model parquant dequantized gets them simulated here."""
    from .quant.activations import ActivationSimulation, activation_schemes
    from .quant.detect import needs_parquant_dequantizer

    quantization = candidate.config().get("quantization_config") or {}
    names = candidate.names()
    if not quantization:
        return contextlib.nullcontext(), "none: not quantized"
    if not needs_parquant_dequantizer(quantization, names):
        groups = (quantization.get("config_groups") or {}).values()
        if any((g or {}).get("input_activations") for g in groups):
            return contextlib.nullcontext(), "by compressed-tensors in transformers (the scheme's own)"
        return contextlib.nullcontext(), "none: the scheme quantizes weights only"
    wanted = (".input_scale", ".weight_scale", ".weight_scale_2", ".weight_scale_int4")
    tensors = {n: candidate.load(n) for n in names if n.endswith(wanted)}
    simulation = ActivationSimulation(model, activation_schemes(quantization, tensors))
    return simulation, simulation.summary()


def _compare(name: str, original: torch.Tensor, restored: torch.Tensor) -> TensorMetric:
    original, restored = original.double().flatten(), restored.double().flatten()  # float32 sums drift ~1e-4
    difference = restored - original
    norms = original.norm() * restored.norm()
    cosine = (original @ restored) / norms if float(norms) > 0 else torch.tensor(1.0)
    relative = difference.norm() / original.norm().clamp(min=1e-12)
    return TensorMetric(
        name, round(float(cosine), 6), round(float(relative), 6), round(float(difference.abs().max()), 6)
    )


def _check_same_architecture(reference: dict[str, Any], candidate: dict[str, Any]) -> None:
    for key in _SHAPE_KEYS:
        if reference.get(key) != candidate.get(key):
            raise InvalidInputError(
                f"mismatched architectures: {key} is {reference.get(key)!r} in the reference and "
                f"{candidate.get(key)!r} in the candidate; validate a model against its own original"
            )


def gate(result: ValidationResult) -> None:
    """Raise exit 79 when the candidate missed a threshold."""
    failure = result.failure()
    if failure is not None:
        raise failure
