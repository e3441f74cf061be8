#!/usr/bin/env bash
# Train on the GPUs of this machine: one JAX process sees all local GPUs and shards over them with
# the config's mesh; with --processes=N, N processes split the GPUs (one process per GPU group, as on
# a multi-host cluster) and meet through a coordinator on localhost.
#
#   launch/local_gpu.sh --workdir=workdirs/dyck_124m -- --config=configs/scale.py:size=124m
#   launch/local_gpu.sh --processes=2 --workdir=workdirs/dyck_355m -- --config=configs/scale.py:size=355m
#
# Install once with: .venv/bin/pip install -e '.[gpu]'. --dry-run prints the commands.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local_gpu.sh --workdir=DIR [--processes=N] [--port=P] [--python=PY] [--dry-run] -- MAIN_FLAGS...

Runs python -m procedural_pretraining.main on this machine's GPUs.
  --workdir=DIR     run directory (re-running the command resumes from its newest checkpoint)
  --processes=N     JAX processes (default 1: one process drives every GPU); N > 1 gives process i
                    the GPUs i·G/N … (i+1)·G/N-1 via CUDA_VISIBLE_DEVICES and logs to DIR/process-i.log
  --port=P          coordinator port on localhost for N > 1 (default 12355)
  --python=PY       interpreter (default .venv/bin/python)
  --dry-run         print the commands, run nothing
  -h, --help        this text
EOF
}

WORKDIR="" PROCESSES=1 PORT=12355 PY=".venv/bin/python" DRY=0 MAIN_FLAGS=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --processes=*) PROCESSES="${1#*=}" ;;
    --port=*) PORT="${1#*=}" ;;
    --python=*) PY="${1#*=}" ;;
    --dry-run) DRY=1 ;;
    --) shift; MAIN_FLAGS=("$@"); break ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$WORKDIR" ]] || { echo "error: --workdir is required (see --help)" >&2; exit 2; }
((${#MAIN_FLAGS[@]})) || { echo "error: give main's flags after --, e.g. -- --config=configs/scale.py:size=124m" >&2; exit 2; }
cd "$(dirname "${BASH_SOURCE[0]}")/.."

x() {
  if ((DRY)); then
    local word line=""
    for word in "$@"; do
      if [[ "$word" =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then line+=" $word"; else line+=" '${word//\'/\'\\\'\'}'"; fi
    done
    echo "${line# }"
  else
    "$@"
  fi
}

MAIN=("$PY" -m procedural_pretraining.main --workdir="$WORKDIR" "${MAIN_FLAGS[@]}")
if ((PROCESSES == 1)); then
  x env JAX_PLATFORMS=cuda "${MAIN[@]}"
  exit
fi

if ((DRY)); then
  GPUS=8
  echo "# GPU count from nvidia-smi -L (8 assumed here)"
else
  GPUS=$(nvidia-smi -L | grep -c '^GPU')
fi
((GPUS % PROCESSES == 0)) || { echo "error: $GPUS GPUs do not split into $PROCESSES processes" >&2; exit 2; }
PER=$((GPUS / PROCESSES))
x mkdir -p "$WORKDIR"
PIDS=()
for ((i = 0; i < PROCESSES; i++)); do
  VISIBLE=$(seq -s, $((i * PER)) $(((i + 1) * PER - 1)))
  COMMAND=(env JAX_PLATFORMS=cuda CUDA_VISIBLE_DEVICES="$VISIBLE" "${MAIN[@]}"
           --coordinator_address="127.0.0.1:$PORT" --num_processes="$PROCESSES" --process_id="$i")
  if ((DRY)); then
    x "${COMMAND[@]}"
  else
    "${COMMAND[@]}" >"$WORKDIR/process-$i.log" 2>&1 &
    PIDS+=($!)
  fi
done
((DRY)) && exit 0
# SIGTERM/SIGINT reach every process: all of them save the checkpoint of the same step and exit.
trap 'kill -TERM "${PIDS[@]}" 2>/dev/null || true' TERM INT
STATUS=0
for pid in "${PIDS[@]}"; do
  # `wait` also returns when a trapped signal arrives: keep waiting while the process lives.
  until wait "$pid"; do
    code=$?
    kill -0 "$pid" 2>/dev/null || { STATUS=$code; break; }
  done
done
echo "processes finished (exit $STATUS); logs in $WORKDIR/process-*.log"
exit "$STATUS"
