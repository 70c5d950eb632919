# Shared set-up steps for scripts/test.sh and scripts/quickstart.sh (sourced, not run).

log() { echo "[kiln] $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

apt_install() {
  # Install the Debian packages named, updating the package lists once.
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 60); do port_open "$port" && return 0; sleep 0.5; done
  log "$name did not start on 127.0.0.1:$port"; return 1
}

ensure_redis() {
  port_open 6379 && return 0
  apt_install redis-server
  log "starting Redis on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/kiln.log
  wait_port 6379 Redis
}

ensure_postgres() {
  port_open 5432 && return 0
  apt_install postgresql
  log "starting PostgreSQL on 127.0.0.1:5432"
  local ver
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
  if [ -z "$ver" ]; then log "PostgreSQL installed but no cluster found"; return 1; fi
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  wait_port 5432 PostgreSQL
  # Tests connect as user postgres over TCP without a password, as on the development machines.
  local hba="/etc/postgresql/$ver/main/pg_hba.conf"
  if ! grep -q "kiln-test" "$hba"; then
    { echo "# kiln-test: trust loopback for the test suite";
      echo "host all all 127.0.0.1/32 trust"; echo "host all all ::1/128 trust"; } > "$hba.kiln"
    cat "$hba" >> "$hba.kiln" && mv "$hba.kiln" "$hba"
    chown postgres:postgres "$hba" 2>/dev/null || true
    pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
  fi
}

ensure_chromium() {
  # Headless Chromium for the dashboard's browser tests (Playwright drives this one; it
  # downloads no browser of its own).
  command -v chromium >/dev/null 2>&1 || apt_install chromium
}

ensure_services() {
  ensure_redis
  ensure_postgres
}

ensure_sandbox() {
  # bubblewrap isolates each compile (KILN_WORKER_SANDBOX=bubblewrap, the default); setpriv
  # (util-linux) drops a root worker's compile to an unprivileged user.
  command -v bwrap >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1 && return 0
  apt_install bubblewrap util-linux || log "could not install bubblewrap: kiln-worker will refuse to start until it is installed (or KILN_WORKER_SANDBOX=none is set)"
}

ensure_mlflow() {
  # MLflow (3.x) for the MLflow round-trip tests, in a venv of its own: its dependencies are not
  # the workspace's. The service itself talks to MLflow's REST API and never imports it.
  local venv="${KILN_MLFLOW_VENV:-.artifacts/mlflow-venv}"
  [ -x "$venv/bin/mlflow" ] && return 0
  command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
  log "installing MLflow into $venv"
  uv venv -q --python 3.11 "$venv" && VIRTUAL_ENV="$venv" uv pip install -q --compile-bytecode "mlflow>=3,<4"
}

ensure_python_env() {
  if ! command -v uv >/dev/null 2>&1; then
    log "installing uv"
    python3 -m pip install -q uv
  fi
  log "installing the Python workspace (uv sync)"
  # --all-extras: the tests exercise the optional pieces too (OpenTelemetry traces).
  # --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (as on CI machines), Python never
  # caches bytecode, and every process that imports TensorFlow compiles its ~1,800 modules from
  # source again: 8-11 s instead of 3 s per import, in every worker and compile process.
  uv sync --all-packages --all-extras --frozen --quiet --compile-bytecode
  .venv/bin/python -m compileall -q client/src service/src worker/src >/dev/null
}
