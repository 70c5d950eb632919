# Kiln API image: `kiln-service serve` (and the one-shot `kiln-service migrate`).
# Build from the repository root: docker build -f docker/api.Dockerfile -t kiln/api .
FROM python:3.11-slim

COPY --from=ghcr.io/astral-sh/uv:0.8 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/kiln \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/kiln/bin:$PATH

WORKDIR /src
# Dependencies first (cached while only Kiln's code changes). Every workspace member's
# pyproject.toml is needed for uv to read the lock, even those not installed here.
COPY pyproject.toml uv.lock ./
COPY client/pyproject.toml client/pyproject.toml
COPY service/pyproject.toml service/pyproject.toml
COPY worker/pyproject.toml worker/pyproject.toml
RUN uv sync --package kiln-service --frozen --all-extras --no-dev --no-install-workspace

COPY client client
COPY service service
RUN uv sync --package kiln-service --frozen --all-extras --no-dev --no-editable

RUN useradd --system --uid 10001 --home-dir /var/lib/kiln --create-home kiln
USER kiln
WORKDIR /var/lib/kiln
ENV KILN_DATA_DIR=/var/lib/kiln KILN_HOST=0.0.0.0 KILN_PORT=8000
EXPOSE 8000
CMD ["kiln-service", "serve"]
