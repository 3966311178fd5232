# discoseg: the API (`discoseg serve`) and the batch-job worker (`discoseg worker`) in one image.
#
#   CPU (default):  docker build -t discoseg:cpu .
#   CUDA:           docker build --build-arg TORCH_VARIANT=cuda -t discoseg:cuda .
#
# CPU installs torch/torchvision from PyTorch's CPU wheel index (no CUDA libraries, a much
# smaller image); CUDA installs the PyPI wheels pinned in constraints.txt, which bring their own
# CUDA runtime, so the slim base suffices (the host needs the NVIDIA driver and the container
# toolkit: `docker run --gpus all`). Versions always come from constraints.txt.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DISCOSEG_MODEL_PATH=/models/model.pt \
    DISCOSEG_JOB_STORE=/jobs \
    DISCOSEG_DATA_ROOT=/data

WORKDIR /app

# Dependencies first, so code changes do not reinstall torch.
COPY pyproject.toml constraints.txt README.md ./
RUN set -eux; \
    case "${TORCH_VARIANT}" in \
      cpu) pip install --index-url https://download.pytorch.org/whl/cpu \
             $(grep -E '^(torch|torchvision)==' constraints.txt) ;; \
      cuda) ;; \
      *) echo "TORCH_VARIANT must be cpu or cuda, got ${TORCH_VARIANT}" >&2; exit 1 ;; \
    esac

COPY models ./models
COPY training ./training
COPY service ./service
RUN pip install -c constraints.txt . \
    && useradd --system --uid 10001 --home-dir /app discoseg \
    && mkdir -p /models /jobs /data \
    && chown discoseg /jobs

USER discoseg
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["discoseg", "serve", "--host", "0.0.0.0", "--port", "8000"]
