# parquant images, one build for both flavors:
#   cpu: CPU torch, the built-in PTQ backend and AngelSlim on CPU (about 1.9 GB)
#   gpu: CUDA torch from PyPI (CUDA libraries come as wheels; the node supplies the driver), AngelSlim
#
#   docker build --build-arg FLAVOR=cpu -t parquant:cpu .
#   docker build --build-arg FLAVOR=gpu -t parquant:gpu .
#   make image-cpu / make image-gpu (docker when a daemon runs, otherwise buildah; see deploy/image)
#
# Versions come from pyproject.toml alone (deploy/image/requirements.py reads it). BASE must be a
# Debian bookworm-like image with Python 3.11 and venv; `make image-cpu` without a registry uses a
# local one made by mmdebstrap.
ARG BASE=python:3.11-slim-bookworm

# ---- build: a virtual environment in /opt/parquant; nothing else of this stage survives ----
FROM ${BASE} AS build
ARG FLAVOR=cpu
# pip settings for builds behind a mirror or offline (unset unless given with --build-arg)
ARG PIP_FIND_LINKS
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
# The CPU build of torch lives on PyTorch's own index (PyPI's torch is the CUDA build). Offline
# builds pass TORCH_INDEX_URL= and PIP_FIND_LINKS pointing at a folder that holds the wheel.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# FLAVOR=gpu installs PyPI's CUDA torch plus triton (AngelSlim's GPU kernels); GPU_TORCH_BUILD=cpu
# puts the CPU wheel in its place (CI, which cannot fetch the CUDA wheel, builds the rest that way).
ARG GPU_TORCH_BUILD=cuda
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/parquant
WORKDIR /src
# Dependencies before sources: torch first (most of the image, changes least), then the rest; a
# code edit rebuilds only the last layer.
COPY pyproject.toml requirements-angelslim.txt deploy/image/requirements.py ./
RUN torch=$(python3 requirements.py torch) \
 && if [ "$FLAVOR" = gpu ] && [ "$GPU_TORCH_BUILD" = cuda ]; then \
      /opt/parquant/bin/pip install "$torch" triton; \
    else \
      /opt/parquant/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "$torch+cpu"; \
    fi
RUN python3 requirements.py s3 k8s angelslim > /tmp/requirements.txt \
 && /opt/parquant/bin/pip install -r /tmp/requirements.txt \
 && /opt/parquant/bin/pip install --no-deps -r requirements-angelslim.txt
COPY README.md ./
COPY pkg ./pkg
COPY cmd ./cmd
RUN /opt/parquant/bin/pip install --no-deps . \
 && /opt/parquant/bin/python -c "import kubernetes, s3fs; from parquant.quant.angelslim_compat import load_angelslim; load_angelslim()"

# ---- runtime: the base, the venv, the examples, a non-root user ----
FROM ${BASE}
ARG FLAVOR=cpu
ENV PATH=/opt/parquant/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/parquant XDG_CACHE_HOME=/home/parquant/.cache \
    HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN groupadd --system --gid 10001 parquant \
 && useradd --system --uid 10001 --gid parquant --home-dir /home/parquant --create-home --shell /usr/sbin/nologin parquant
WORKDIR /home/parquant
# The embedded default model, its data and the demo pipeline: `docker run IMAGE pipeline examples/pipelines/demo.yaml`
COPY examples/tiny-llama ./examples/tiny-llama
COPY examples/data ./examples/data
COPY examples/pipelines ./examples/pipelines
COPY --from=build /opt/parquant /opt/parquant
USER 10001:10001
ENTRYPOINT ["parquant"]
CMD ["--help"]
LABEL org.opencontainers.image.title="parquant (${FLAVOR})" org.opencontainers.image.licenses="Apache-2.0"
