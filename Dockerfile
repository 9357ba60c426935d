# syntax=docker/dockerfile:1
# ubs-embed images. Targets:
#   cpu    the service on onnxruntime (CPU), slim Python base   docker build --target cpu -t ubs-embed:cpu .
#   gpu    the service on onnxruntime-gpu, CUDA 13 + cuDNN 9     docker build --target gpu -t ubs-embed:gpu .
#   train  the trainer (CPU torch) that writes a bundle            docker build --target train -t ubs-embed:train .
# Neither serving image has torch. Every Python package version comes from
# deploy/constraints.txt; base images are pinned by tag.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---- wheel: build the project wheel once, for every target -----------------------------
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY app ./app
COPY bench ./bench
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- cpu: the service on CPU -------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UBS_BUNDLE_DIR=/bundles/default \
    UBS_HOST=0.0.0.0 \
    UBS_PORT=8000
RUN groupadd --system --gid 10001 ubs \
    && useradd --system --uid 10001 --gid ubs --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ubs
COPY deploy/constraints.txt /etc/ubs-embed/constraints.txt
COPY --from=wheel /wheels /wheels
RUN pip install --constraint /etc/ubs-embed/constraints.txt /wheels/*.whl \
    && rm -rf /wheels \
    && python -c "import onnxruntime; import app, model" \
    && ! python -c "import torch" 2>/dev/null
COPY deploy/healthcheck.py /usr/local/bin/ubs-embed-healthcheck
USER 10001:10001
EXPOSE 8000
# The bundle comes from a volume (compose: the trainer's; Kubernetes: the bundle PVC).
VOLUME ["/bundles"]
HEALTHCHECK --interval=10s --timeout=4s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/ubs-embed-healthcheck", "/healthz"]
# uvicorn stops on SIGTERM by refusing new connections and finishing the requests in
# flight; give it the time with `stop_grace_period` (compose) or
# `terminationGracePeriodSeconds` (Kubernetes).
STOPSIGNAL SIGTERM
CMD ["ubs-embed", "serve"]

# ---- gpu: the service on onnxruntime-gpu ----------------------------------------------
# onnxruntime-gpu 1.31 from PyPI links CUDA 13 and cuDNN 9: the host needs an NVIDIA
# driver for CUDA 13 (>= 580) and the NVIDIA Container Toolkit.
FROM ${CUDA_IMAGE} AS gpu
ARG ORT_GPU_VERSION=1.31.1
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH \
    UBS_BUNDLE_DIR=/bundles/default \
    UBS_HOST=0.0.0.0 \
    UBS_PORT=8000 \
    UBS_PROVIDER=cuda
# Ubuntu's archive keeps only the newest patch build of a package, so an exact apt pin
# breaks the build on the next security update; the CUDA image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && groupadd --system --gid 10001 ubs \
    && useradd --system --uid 10001 --gid ubs --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ubs
COPY deploy/constraints.txt /etc/ubs-embed/constraints.txt
COPY --from=wheel /wheels /wheels
# The project depends on onnxruntime; onnxruntime-gpu provides the same module, and the
# two must not be installed together.
RUN pip install --constraint /etc/ubs-embed/constraints.txt /wheels/*.whl \
    && pip uninstall -y onnxruntime \
    && pip install --constraint /etc/ubs-embed/constraints.txt "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && rm -rf /wheels \
    && python -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers()" \
    && ! python -c "import torch" 2>/dev/null
COPY deploy/healthcheck.py /usr/local/bin/ubs-embed-healthcheck
USER 10001:10001
EXPOSE 8000
VOLUME ["/bundles"]
HEALTHCHECK --interval=10s --timeout=4s --start-period=90s --retries=3 \
    CMD ["python", "/usr/local/bin/ubs-embed-healthcheck", "/healthz"]
STOPSIGNAL SIGTERM
CMD ["ubs-embed", "serve"]

# ---- train: CPU torch, trains and exports a bundle ---------------------------------------
FROM ${PYTHON_IMAGE} AS train
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UBS_BUNDLE_DIR=/bundles/default \
    UBS_TRAIN_DATA=/data
RUN groupadd --system --gid 10001 ubs \
    && useradd --system --uid 10001 --gid ubs --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ubs \
    && mkdir -p /bundles \
    && chown ubs:ubs /bundles
COPY deploy/constraints.txt /etc/ubs-embed/constraints.txt
COPY --from=wheel /wheels /wheels
# PyPI's Linux torch wheel is the CUDA build (several GB); the CPU build is on PyTorch's
# own index under the same version number.
RUN pip install --constraint /etc/ubs-embed/constraints.txt \
        --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu" \
    && wheel="$(ls /wheels/*.whl)" \
    && pip install --constraint /etc/ubs-embed/constraints.txt "${wheel}[train]" \
    && rm -rf /wheels
COPY --chmod=0755 deploy/train-bundle.sh /usr/local/bin/train-bundle
USER 10001:10001
VOLUME ["/bundles"]
ENTRYPOINT ["train-bundle"]
