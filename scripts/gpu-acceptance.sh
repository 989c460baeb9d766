#!/usr/bin/env bash
# GPU acceptance for the build stage: the single command to run on a GPU host.
#
# Run inside NVIDIA's Triton TRT-LLM container that still ships `trtllm-build` (facts.md, "The
# pinned GPU release": TensorRT-LLM 1.2.1; third-party notes pair it with
# nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3, NVIDIA's own matrix ends at 25.12 with
# TRT-LLM 1.1.0 — this script prints what the image really holds), with this repo mounted:
#
#   docker run --rm --gpus all -v "$PWD":/work/main -w /work/main \
#     nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3 bash scripts/gpu-acceptance.sh
#
# It detects the SKU, builds a quantized engine (fp8 with fp8 KV cache on compute >= 8.9;
# int8_sq with int8 KV, then int8_wo, on Ampere) and a bf16 engine of the model, installs each
# into its own Triton model repository, and prints what to compare. A precision whose quality
# gate fails is reported and skipped, not installed.
#
# Environment: MODEL_DIR (HF folder; default the SmolLM2 cache), OUT (default
# /tmp/autoglm-acceptance), TP (default 1).
#
# `--model autoglm-phone-9b` instead serves Open-AutoGLM's own vision-language model, which
# TensorRT-LLM cannot build, on Triton's vLLM backend (inside tritonserver:<yy.mm>-vllm-python-py3):
# scripts/gpu-acceptance-vllm.sh says how. `--dry-run` (that path only) prints its commands.
set -euo pipefail

usage() {
  echo "usage: $0 [--model autoglm-phone-9b [--dry-run]]" >&2
  echo "  (no option: the TensorRT-LLM engine builds of MODEL_DIR, as before)" >&2
}
MODEL_ARG=""
DRY=0
while [ "$#" -gt 0 ]; do
  case "$1" in
    --model) [ "$#" -ge 2 ] || { usage; exit 2; }; MODEL_ARG="$2"; shift 2 ;;
    --model=*) MODEL_ARG="${1#--model=}"; shift ;;
    --dry-run) DRY=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage; exit 2 ;;
  esac
done
case "$MODEL_ARG" in
  autoglm-phone-9b)
    if [ "$DRY" = 1 ]; then export DRY_RUN=1; fi
    exec bash "$(dirname "${BASH_SOURCE[0]}")/gpu-acceptance-vllm.sh" ;;
  "") [ "$DRY" = 0 ] || { echo "--dry-run needs --model autoglm-phone-9b" >&2; exit 2; } ;;
  *) echo "unknown model: $MODEL_ARG (known: autoglm-phone-9b)" >&2; exit 2 ;;
esac

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL_DIR="${MODEL_DIR:-$HOME/.cache/autoglm/models/SmolLM2-135M-Instruct}"
OUT="${OUT:-/tmp/autoglm-acceptance}"
TP="${TP:-1}"
PY="${PY:-python3}"
BUILD=("$PY" -m autoglm.build_engine.cli)

say() { printf '\n=== %s\n' "$*"; }

say "versions inside this image (recorded in every manifest.json)"
pip show tensorrt_llm tensorrt 2>/dev/null | grep -E '^(Name|Version):' || true
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader
command -v trtllm-build >/dev/null || { echo "trtllm-build not found: wrong image" >&2; exit 2; }
# The flags plan.py emits must exist in this release (plan.py cites the sources read).
for flag in --checkpoint_dir --output_dir --gemm_plugin --gpt_attention_plugin --kv_cache_type \
  --use_paged_context_fmha --use_fp8_context_fmha --remove_input_padding --multiple_profiles \
  --max_batch_size --max_input_len --max_seq_len --max_num_tokens --max_beam_width --workers \
  --input_timing_cache --output_timing_cache --log_level; do
  trtllm-build --help 2>/dev/null | grep -q -- "$flag" || { echo "trtllm-build lacks $flag" >&2; exit 2; }
done

say "install this repo without touching the image's torch / TensorRT-LLM"
pip install --no-deps -e "$REPO_ROOT"
"$PY" -c 'import modelopt' 2>/dev/null || pip install --no-deps 'nvidia-modelopt[hf]==0.47.0'
[ -f "$MODEL_DIR/config.json" ] || { echo "no HF model at $MODEL_DIR (set MODEL_DIR)" >&2; exit 2; }

say "detect the SKU"
SKU="$("$PY" - <<'PYEOF'
import sys
from autoglm.build_engine.gpus import detect_gpus
from autoglm.build_engine.skus import sku_for_gpu
gpus = detect_gpus()
if not gpus:
    sys.exit("no GPU visible to this container (--gpus all?)")
sku = sku_for_gpu(gpus[0].name, gpus[0].compute_capability)
if sku is None:
    sys.exit(f"{gpus[0].name} (compute {gpus[0].cc_string}) is not in the SKU catalogue")
print(sku.name)
PYEOF
)"
echo "SKU: $SKU"
if "$PY" -c "import sys; from autoglm.build_engine.skus import get_sku; sys.exit('fp8' not in get_sku('$SKU').precisions)"; then
  BUILDS=("fp8:fp8" "bf16:auto")
else
  BUILDS=("int8_sq:int8" "int8_wo:auto" "bf16:auto")
fi

declare -a DONE=() FAILED=()
for spec in "${BUILDS[@]}"; do
  prec="${spec%%:*}"; kv="${spec##*:}"
  dir="$OUT/$SKU-$prec"; repo="$OUT/repo-$prec"
  say "$prec (kv cache $kv) → $dir"
  rm -rf "$dir"
  "${BUILD[@]}" plan --model-dir "$MODEL_DIR" --sku "$SKU" --precision "$prec" \
    --kv-cache-dtype "$kv" --tp "$TP" --output-dir "$dir" --model-repo "$repo"
  "${BUILD[@]}" quantize --plan "$dir/plan.json"
  if ! "${BUILD[@]}" quality --plan "$dir/plan.json"; then
    FAILED+=("$prec"); continue
  fi
  "${BUILD[@]}" compile --plan "$dir/plan.json"
  "${BUILD[@]}" install --plan "$dir/plan.json"
  DONE+=("$prec")
done

say "what to compare"
for prec in "${DONE[@]}"; do
  dir="$OUT/$SKU-$prec"; repo="$OUT/repo-$prec"
  echo "--- $prec"
  "$PY" - "$dir/engine/manifest.json" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
q = m["quality"] or {}
size = sum(1 for _ in m["files"])
print(f"profile {m['profile_id']}  TensorRT {m['tensorrt_version']}  TRT-LLM "
      f"{m['tensorrt_llm_version']}  build {m['build_seconds']:.0f}s  files {size}")
print(f"quality: ppl {q.get('base_ppl')} -> {q.get('quant_ppl')} (ratio {q.get('ppl_ratio')}), "
      f"greedy agreement {q.get('token_agreement')}")
PYEOF
  du -sh "$dir/engine" | sed 's/^/engine size: /'
  echo "serve:  tritonserver --model-repository=$repo   (TP>1: python3 <backend>/scripts/launch_triton_server.py --world_size=$TP --model_repo=$repo)"
done
[ "${#FAILED[@]}" -eq 0 ] || echo "quality gate failed (not installed): ${FAILED[*]}"
echo
echo "Compare across precisions: (1) each repo loads in Triton with no 'incompatible device' /"
echo "'not compatible with this version of TensorRT' error; (2) greedy answer to 'The capital of"
echo "France is' through the façade; (3) tokens/s and time-to-first-token per engine;"
echo "(4) the quality numbers above against the CPU figures in docs/build.md; (5) profile choice:"
echo "  ${BUILD[*]} list-profiles $OUT/repo-*/tensorrt_llm"
