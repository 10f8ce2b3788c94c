#!/usr/bin/env bash
# The GPU check: a few steps of every task and stage-1 method under bf16, fp16 + gradient scaler, channels_last and
# torch.compile; the quickstart study; bench finetune / pretrain at 224 px; a markdown report.
# On a machine without CUDA it runs, skips every CUDA part with a message, and still writes the report.
#   scripts/gpu_check.sh [OUT_DIR] [medtransfer doctor options...]     (default OUT_DIR: runs/gpu_check)
# PYTHON selects the interpreter (default: python3 on PATH, e.g. the project's virtual environment).
set -euo pipefail
out="$(realpath -m "${1:-runs/gpu_check}")"  # relative to where it was started
cd "$(dirname "$0")/.."
shift $(( $# > 0 ? 1 : 0 ))
exec "${PYTHON:-python3}" -m transfer.cli doctor --gpu --out "$out" "$@"
