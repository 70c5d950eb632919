#!/usr/bin/env bash
# Command (2) of the README: install everything and run Kiln's whole test suite.
# Installs Debian packages (Redis, PostgreSQL) when missing, starts them on 127.0.0.1 when not
# running, installs the Python workspace with uv from uv.lock, then runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/tracer -k dynamic`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_services.sh

ensure_services
ensure_sandbox
ensure_chromium
ensure_python_env
ensure_mlflow

export TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2
export KILN_TEST_REDIS_URL="${KILN_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export KILN_TEST_POSTGRES_URL="${KILN_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}"

echo "== ruff"
.venv/bin/ruff check client service worker tests bench scripts
# KILN_TEST_WORKERS=N runs the tests on N pytest-xdist workers (default 2), each with its own
# Redis server; a directory whose session fixtures are costly stays on one worker
# (tests/conftest.py). From a fresh clone on a 2-core machine: one process 32 min (it left a core
# idle most of the time), two workers 20 min. KILN_TEST_WORKERS=1 runs them in one process.
workers="${KILN_TEST_WORKERS:-2}"
parallel=()
if [ "$workers" -gt 1 ]; then parallel=(-n "$workers" --dist loadgroup); fi
echo "== pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider -ra --durations=40 "${parallel[@]}" "$@"
