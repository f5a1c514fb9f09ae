# parquant images. Two targets:
#   cpu: CPU torch, the built-in PTQ backend and AngelSlim on CPU (about 1.5 GB)
#   gpu: CUDA torch from PyPI (CUDA libraries come as wheels; the node supplies the driver), AngelSlim
#
#   docker build --target cpu -t parquant:cpu .
#   docker build --target gpu -t parquant:gpu .
#   make image-cpu / make image-gpu (docker when a daemon runs, otherwise buildah; see deploy/image)
#
# BASE must be a Debian bookworm-like image with Python 3.11 and venv; `make image-cpu` without a
# registry uses a local one made by mmdebstrap.
ARG BASE=python:3.11-slim-bookworm

# ---- builder: a virtual environment in /opt/parquant, nothing else survives from these stages ----
FROM ${BASE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/parquant
WORKDIR /src

# torch first, in its own layer: it is most of the image and changes least.
FROM builder AS torch-cpu
# pip settings for builds behind a mirror or offline (unset unless given with --build-arg; an ARG
# holds only in the stage that declares it)
ARG PIP_FIND_LINKS
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
# The CPU build of torch lives on PyTorch's own index (PyPI's torch is the CUDA build). Offline
# builds pass TORCH_INDEX_URL= and PIP_FIND_LINKS pointing at a folder that holds the wheel.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN /opt/parquant/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==2.13.0+cpu"

FROM builder AS torch-gpu
# pip settings for builds behind a mirror or offline (unset unless given with --build-arg; an ARG
# holds only in the stage that declares it)
ARG PIP_FIND_LINKS
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
# PyPI's torch 2.13.0 is the CUDA build (CUDA libraries as wheels); triton runs AngelSlim's GPU kernels.
# CI, which cannot fetch the CUDA wheel, builds the rest of this target with GPU_TORCH=torch==2.13.0+cpu.
ARG GPU_TORCH="torch==2.13.0 triton"
RUN /opt/parquant/bin/pip install ${GPU_TORCH}

FROM torch-cpu AS build-cpu
# pip settings for builds behind a mirror or offline (unset unless given with --build-arg; an ARG
# holds only in the stage that declares it)
ARG PIP_FIND_LINKS
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
COPY pyproject.toml README.md requirements-angelslim.txt ./
COPY pkg ./pkg
COPY cmd ./cmd
RUN /opt/parquant/bin/pip install ".[s3,k8s,angelslim]" \
 && /opt/parquant/bin/pip install --no-deps -r requirements-angelslim.txt \
 && /opt/parquant/bin/python -c "import kubernetes, s3fs; from parquant.quant.angelslim_compat import load_angelslim; load_angelslim()"

FROM torch-gpu AS build-gpu
# pip settings for builds behind a mirror or offline (unset unless given with --build-arg; an ARG
# holds only in the stage that declares it)
ARG PIP_FIND_LINKS
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
COPY pyproject.toml README.md requirements-angelslim.txt ./
COPY pkg ./pkg
COPY cmd ./cmd
RUN /opt/parquant/bin/pip install ".[s3,k8s,angelslim]" \
 && /opt/parquant/bin/pip install --no-deps -r requirements-angelslim.txt \
 && /opt/parquant/bin/python -c "import kubernetes, s3fs; from parquant.quant.angelslim_compat import load_angelslim; load_angelslim()"

# ---- runtime: the base, the venv, the examples, a non-root user ----
FROM ${BASE} AS runtime
ENV PATH=/opt/parquant/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/parquant XDG_CACHE_HOME=/home/parquant/.cache \
    HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 MPLCONFIGDIR=/tmp/matplotlib
RUN groupadd --system --gid 10001 parquant \
 && useradd --system --uid 10001 --gid parquant --home-dir /home/parquant --create-home --shell /usr/sbin/nologin parquant
WORKDIR /home/parquant
# The embedded default model, its data and the demo pipeline: `docker run IMAGE pipeline examples/pipelines/demo.yaml`
COPY examples/tiny-llama ./examples/tiny-llama
COPY examples/data ./examples/data
COPY examples/pipelines ./examples/pipelines
USER 10001:10001
ENTRYPOINT ["parquant"]
CMD ["--help"]

FROM runtime AS cpu
COPY --from=build-cpu /opt/parquant /opt/parquant
LABEL org.opencontainers.image.title="parquant (CPU)" org.opencontainers.image.licenses="Apache-2.0"

FROM runtime AS gpu
COPY --from=build-gpu /opt/parquant /opt/parquant
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
LABEL org.opencontainers.image.title="parquant (GPU)" org.opencontainers.image.licenses="Apache-2.0"
