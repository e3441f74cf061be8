#!/usr/bin/env bash
# Train on a Cloud TPU VM (one host or a pod slice): create or reuse the VM, install this repository
# into a venv on every worker, run the same `main` command on all workers against a gs:// workdir
# (the JAX processes find each other through the TPU metadata: --distributed), and fetch the logs.
#
#   launch/tpu_vm.sh --name=pp-v4 --zone=us-central2-b --type=v4-32 --workdir=gs://BUCKET/dyck_1p3b \
#       -- --config=configs/scale.py:size=1.3b
#
# Steps (default: all of them, in order): create, setup, run, logs. Re-running `run` with the same
# workdir resumes from the newest checkpoint in the bucket (e.g. after a spot VM was preempted).
# --dry-run prints every gcloud command instead of running it.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh --name=NAME --zone=ZONE --workdir=gs://BUCKET/RUN [options] [STEP...] -- MAIN_FLAGS...

Create or reuse a Cloud TPU VM, install this repository on every worker, run
`python -m procedural_pretraining.main --distributed --workdir=WORKDIR MAIN_FLAGS` on all workers,
and copy each worker's log to ./logs/NAME/.

Steps (default: create setup run logs):
  create   create the TPU VM unless it exists (gcloud compute tpus tpu-vm describe/create)
  setup    copy the repository (git HEAD) to every worker and pip install it into ~/pp-venv
  run      run main on all workers (foreground; each worker also tees into ~/NAME.log)
  logs     fetch ~/NAME.log from every worker into ./logs/NAME/worker-<i>.log
  delete   delete the TPU VM (never run by default)

Options:
  --name=NAME          TPU VM name (required)
  --zone=ZONE          zone, e.g. us-central2-b (required)
  --workdir=gs://...   run directory in Cloud Storage, shared by all workers (required for run)
  --type=TYPE          accelerator type for create (default v4-8; a pod slice: v4-32, v5litepod-16, ...)
  --version=VERSION    TPU VM software version for create (default tpu-ubuntu2204-base)
  --project=PROJECT    gcloud project (default: gcloud's configured project)
  --spot               create a spot (preemptible) VM
  --workers=N          number of workers, for `logs` under --dry-run (otherwise read from gcloud)
  --dry-run            print the gcloud commands, run nothing
  -h, --help           this text

MAIN_FLAGS go to procedural_pretraining.main unchanged, e.g.
  -- --config=configs/scale.py:size=355m --config.train.steps=2000
EOF
}

NAME="" ZONE="" WORKDIR="" TYPE="v4-8" VERSION="tpu-ubuntu2204-base" PROJECT="" SPOT=0 DRY=0 WORKERS=""
STEPS=() MAIN_FLAGS=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --type=*) TYPE="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --workers=*) WORKERS="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --dry-run) DRY=1 ;;
    create|setup|run|logs|delete) STEPS+=("$1") ;;
    --) shift; MAIN_FLAGS=("$@"); break ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
((${#STEPS[@]})) || STEPS=(create setup run logs)
[[ -n "$NAME" && -n "$ZONE" ]] || { echo "error: --name and --zone are required (see --help)" >&2; exit 2; }
for step in "${STEPS[@]}"; do
  if [[ "$step" == run ]]; then
    [[ "$WORKDIR" == gs://* ]] || {
      echo "error: run needs --workdir=gs://BUCKET/RUN (every worker must see the same checkpoints)" >&2
      exit 2; }
    ((${#MAIN_FLAGS[@]})) || { echo "error: run needs main's flags after --, e.g. -- --config=configs/scale.py:size=124m" >&2; exit 2; }
  fi
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")

# Runs (or under --dry-run prints) one command, words quoted so that the printed line can be pasted.
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

# Shell quoting of MAIN_FLAGS for the remote command line.
remote_flags() {
  local out="" flag
  for flag in "${MAIN_FLAGS[@]}"; do out+=" $(printf '%q' "$flag")"; done
  echo "$out"
}

step_create() {
  if ((DRY == 0)) && "${TPU[@]}" describe "$NAME" "${WHERE[@]}" >/dev/null 2>&1; then
    echo "reusing TPU VM $NAME"
    return
  fi
  local create=("${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$TYPE" --version="$VERSION")
  ((SPOT)) && create+=(--spot)
  ((DRY)) && { echo "# unless \`${TPU[*]} describe $NAME ${WHERE[*]}\` succeeds:"; }
  x "${create[@]}"
}

step_setup() {
  local archive=/tmp/procedural_pretraining.tar.gz
  x git -C "$REPO" archive --format=tar.gz -o "$archive" HEAD
  x "${TPU[@]}" scp "$archive" "$NAME:procedural_pretraining.tar.gz" "${WHERE[@]}" --worker=all
  # The tpu extra brings gcsfs: Orbax/etils reach gs:// without TensorFlow.
  x "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="set -e; \
rm -rf ~/procedural_pretraining && mkdir -p ~/procedural_pretraining && \
tar -xzf ~/procedural_pretraining.tar.gz -C ~/procedural_pretraining && \
(test -x ~/pp-venv/bin/python || python3 -m venv ~/pp-venv) && \
~/pp-venv/bin/pip install --quiet --upgrade pip && \
cd ~/procedural_pretraining && ~/pp-venv/bin/pip install --quiet -e \".[tpu]\""
}

step_run() {
  x "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="cd ~/procedural_pretraining && \
~/pp-venv/bin/python -m procedural_pretraining.main --distributed --workdir=$(printf '%q' "$WORKDIR")\
$(remote_flags) 2>&1 | tee ~/$NAME.log; exit \${PIPESTATUS[0]}"
}

step_logs() {
  local count="$WORKERS"
  if [[ -z "$count" ]]; then
    if ((DRY)); then
      count=1
      echo "# worker count: --workers=N, or the networkEndpoints of \`${TPU[*]} describe $NAME ${WHERE[*]}\`"
    else
      count=$("${TPU[@]}" describe "$NAME" "${WHERE[@]}" --format='value(networkEndpoints)' | tr ';' '\n' | grep -c .)
    fi
  fi
  x mkdir -p "logs/$NAME"
  for ((i = 0; i < count; i++)); do
    x "${TPU[@]}" scp "$NAME:$NAME.log" "logs/$NAME/worker-$i.log" "${WHERE[@]}" --worker="$i"
  done
}

step_delete() {
  x "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
}

for step in "${STEPS[@]}"; do
  ((DRY)) && echo "# --- $step"
  "step_$step"
done
