# Kiln xla worker image: `kiln-worker --targets xla` (TensorFlow from PyPI, CPU/XLA).
# Build from the repository root: docker build -f docker/worker.Dockerfile -t kiln/worker .
FROM python:3.11-slim

COPY --from=ghcr.io/astral-sh/uv:0.8 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/kiln \
    PYTHONUNBUFFERED=1 \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PATH=/opt/kiln/bin:$PATH

WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY client/pyproject.toml client/pyproject.toml
COPY service/pyproject.toml service/pyproject.toml
COPY worker/pyproject.toml worker/pyproject.toml
RUN uv sync --package kiln-worker --frozen --all-extras --no-dev --no-install-workspace

COPY client client
COPY service service
COPY worker worker
RUN uv sync --package kiln-worker --frozen --all-extras --no-dev --no-editable

# bubblewrap isolates each compile (KILN_WORKER_SANDBOX); the worker refuses to start without it.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /var/lib/kiln --create-home kiln \
    && mkdir -p /var/lib/kiln/work && chown kiln /var/lib/kiln/work
USER kiln
WORKDIR /var/lib/kiln
ENV KILN_DATA_DIR=/var/lib/kiln KILN_WORKER_WORK_DIR=/var/lib/kiln/work
CMD ["kiln-worker", "--targets", "xla"]
