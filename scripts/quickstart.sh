#!/usr/bin/env bash
# Command (1) of the README: install Kiln, start the API and a worker on this machine with the
# embedded defaults (no servers needed), compile the bundled example model through the HTTP API
# with curl, download the compiled SavedModel, check its sha256, load it with TensorFlow and
# compare its outputs with the original's. The service keeps running afterwards.
#
#   bash scripts/quickstart.sh [--port 8000] [--data-dir ./.kiln]
#   bash scripts/quickstart.sh --stop [--data-dir ./.kiln]     # stop the service it started
#
# KILN_PORT and KILN_DATA_DIR work too. Exits non-zero, with the reason, if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/_services.sh

PORT=${KILN_PORT:-8000}
DATA_DIR=${KILN_DATA_DIR:-$ROOT/.kiln}
STOP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT=$2; shift 2 ;;
    --port=*) PORT=${1#*=}; shift ;;
    --data-dir) DATA_DIR=$2; shift 2 ;;
    --data-dir=*) DATA_DIR=${1#*=}; shift ;;
    --stop) STOP=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) log "unknown argument $1 (try --help)"; exit 2 ;;
  esac
done
mkdir -p "$DATA_DIR"
DATA_DIR=$(cd "$DATA_DIR" && pwd)
PID_FILE=$DATA_DIR/kiln-service.pid
URL=http://127.0.0.1:$PORT
WORK=$DATA_DIR/quickstart
export TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES=""

service_running() { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

stop_service() {
  if ! service_running; then log "no Kiln service from $DATA_DIR is running"; return 0; fi
  local pid; pid=$(cat "$PID_FILE")
  log "stopping kiln-service (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then log "still running; killing it"; kill -KILL "$pid"; fi
  rm -f "$PID_FILE"
}

if [ "$STOP" = 1 ]; then stop_service; exit 0; fi

# -- 1. install -------------------------------------------------------------------------------
command -v curl >/dev/null || apt_install curl ca-certificates
ensure_sandbox
ensure_python_env
PY=$ROOT/.venv/bin/python

# -- 2. start the service (API + worker) ---------------------------------------------------------
mkdir -p "$DATA_DIR/logs" "$WORK"
if service_running && curl -sf "$URL/readyz" >/dev/null; then
  log "reusing the Kiln service already running on $URL (pid $(cat "$PID_FILE"))"
else
  # A service from this data dir on another port (or a stuck one) would hold the database.
  service_running && stop_service
  if port_open "$PORT"; then
    log "port $PORT is taken by another program; choose another with --port"; exit 1
  fi
  log "starting kiln-service up on $URL (data in $DATA_DIR)"
  nohup "$ROOT/.venv/bin/kiln-service" up --port "$PORT" --data-dir "$DATA_DIR" \
    >"$DATA_DIR/logs/service.log" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  for _ in $(seq 1 240); do
    curl -sf "$URL/readyz" >/dev/null && break
    if ! service_running; then
      log "kiln-service exited during start-up; its log:"; tail -n 30 "$DATA_DIR/logs/service.log" >&2
      exit 1
    fi
    sleep 0.5
  done
  curl -sf "$URL/readyz" >/dev/null || { log "the API did not become ready; see $DATA_DIR/logs/"; exit 1; }
fi

# -- API key: `kiln-service up` (auth on by default) wrote a first key to $DATA_DIR/api-key ------
AUTH=()
if [ -n "${KILN_API_KEY:-}" ]; then
  AUTH=(-H "Authorization: Bearer $KILN_API_KEY")
elif [ -f "$DATA_DIR/api-key" ]; then
  AUTH=(-H "Authorization: Bearer $(cat "$DATA_DIR/api-key")")
  log "using the API key in $DATA_DIR/api-key"
else
  log "no API key in $DATA_DIR/api-key (fine if auth is off); create one with:"
  log "  KILN_DATA_DIR=$DATA_DIR $ROOT/.venv/bin/kiln-service keys create --tenant default"
fi

json() { "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'d': d}))" "$@"; }

# -- 3. compile the bundled example through the API ---------------------------------------------
log "submitting examples/mlp/mlp.tar.gz with its example inputs"
code=$(curl -sS "${AUTH[@]}" -o "$WORK/job.json" -w '%{http_code}' -X POST "$URL/v1/compile" \
  -F "model=@examples/mlp/mlp.tar.gz" -F "example_inputs=@examples/mlp/example_inputs.npz" \
  -F "name=quickstart-mlp" -F 'labels={"source": "quickstart"}')
if [ "$code" != 202 ]; then log "submission refused (HTTP $code):"; cat "$WORK/job.json" >&2; exit 1; fi
JOB=$(json "$WORK/job.json" "d['id']")
log "job $JOB queued; following it"

last=""
for _ in $(seq 1 900); do
  curl -sSf "${AUTH[@]}" -o "$WORK/job.json" "$URL/v1/jobs/$JOB"
  status=$(json "$WORK/job.json" "d['status']")
  line=$(json "$WORK/job.json" "f\"{d['status']:<9} {d['stage']:<10} {d['progress']*100:3.0f}%  {d['stage_message'] or ''}\"")
  [ "$line" != "$last" ] && log "  $line" && last=$line
  case "$status" in succeeded|failed|cancelled) break ;; esac
  sleep 1
done
if [ "$status" != succeeded ]; then
  log "job $JOB ended $status: $(json "$WORK/job.json" "d['failure']")"
  log "last lines of its log:"; curl -sS "${AUTH[@]}" "$URL/v1/jobs/$JOB/logs" | tail -n 20 >&2
  exit 1
fi

# -- 4. download, check the digest, load and compare ---------------------------------------------
curl -sSf "${AUTH[@]}" -o "$WORK/compiled_model.tar.gz" "$URL/v1/jobs/$JOB/artifacts/compiled_model.tar.gz"
want=$(json "$WORK/job.json" "[a['sha256'] for a in d['artifacts'] if a['name'] == 'compiled_model.tar.gz'][0]")
got=$(sha256sum "$WORK/compiled_model.tar.gz" | cut -d' ' -f1)
if [ "$want" != "$got" ]; then log "sha256 mismatch: job says $want, download is $got"; exit 1; fi
log "downloaded compiled_model.tar.gz (sha256 $got, matches the job)"
rm -rf "$WORK/compiled" "$WORK/original" && mkdir -p "$WORK/compiled" "$WORK/original"
tar -xzf "$WORK/compiled_model.tar.gz" -C "$WORK/compiled"
tar -xzf examples/mlp/mlp.tar.gz -C "$WORK/original"

"$PY" - "$WORK" <<'PYEOF' 2> >(grep -v -e '^WARNING: All log' -e '^[IWE]0000 ' >&2)
import glob, json, sys
import numpy as np
import tensorflow as tf

work = sys.argv[1]
compiled_dir = glob.glob(f"{work}/compiled/**/saved_model.pb", recursive=True)[0].rsplit("/", 1)[0]
x = np.load("examples/mlp/example_inputs.npz")["x"]
original = tf.saved_model.load(f"{work}/original/mlp").signatures["serving_default"]
compiled = tf.saved_model.load(compiled_dir).signatures["serving_default"]
want = {k: v.numpy() for k, v in original(x=tf.constant(x)).items()}
got = {k: v.numpy() for k, v in compiled(x=tf.constant(x)).items()}
pairs = [(want[k], got[k]) for k in sorted(want)] if set(want) == set(got) else \
    list(zip([want[k] for k in sorted(want)], [got[k] for k in sorted(got)]))
diff = max(float(np.max(np.abs(a - b))) for a, b in pairs)
scale = max(float(np.max(np.abs(a))) for a, _ in pairs)
ok = all(a.shape == b.shape for a, b in pairs) and diff <= 1e-5 + 1e-3 * scale
json.dump({"max_abs_diff": diff, "max_abs_output": scale, "match": ok},
          open(f"{work}/check.json", "w"))
sys.exit(0 if ok else 1)
PYEOF
log "loaded the compiled model with tf.saved_model.load: outputs match the original (max abs diff $(json "$WORK/check.json" "f\"{d['max_abs_diff']:.2e}\""))"

# -- 5. summary ---------------------------------------------------------------------------------
placement=$(json "$WORK/job.json" "'; '.join([f\"{(d['report'] or {}).get('ops_on_accelerator')} of {(d['report'] or {}).get('ops_total')} ops on the accelerator\"] + [f\"{s['name']}: {s['status']} {s['op_types']}\" for s in (d['report'] or {}).get('subgraphs', [])])")
cat <<EOF

Kiln is running on $URL and compiled the example.
  job          $JOB  (succeeded)
  placement    $placement
  check        compiled vs. original outputs match (max abs diff $(json "$WORK/check.json" "f\"{d['max_abs_diff']:.2e}\""))
  files        $WORK/compiled_model.tar.gz (extracted in $WORK/compiled)
  report       curl -H "Authorization: Bearer \$(cat $DATA_DIR/api-key)" $URL/v1/jobs/$JOB/artifacts/report.json
  browse       $URL/docs  (interactive API docs; "Authorize" with the key in $DATA_DIR/api-key)
  logs         $DATA_DIR/logs/
  stop         bash scripts/quickstart.sh --stop --data-dir $DATA_DIR   (or: kill $(cat "$PID_FILE"))
EOF
