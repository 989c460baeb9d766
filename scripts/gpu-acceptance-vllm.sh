#!/usr/bin/env bash
# GPU acceptance of AutoGLM-Phone-9B (GLM-4.1V) on Triton's vLLM backend, behind the façade.
# Started by `scripts/gpu-acceptance.sh --model autoglm-phone-9b [--dry-run]`.
#
# Run inside NVIDIA's Triton vLLM image (tritonserver:26.04-vllm-python-py3 holds vLLM 0.19.0
# per Triton's compatibility matrix; this script prints what the image really holds) with this
# repository and the checkpoint mounted:
#
#   docker run --rm --gpus all --shm-size=1g -v "$PWD":/work/main -w /work/main \
#     -v /models/AutoGLM-Phone-9B:/models/AutoGLM-Phone-9B:ro \
#     -e MODEL_DIR=/models/AutoGLM-Phone-9B -e SHA256_FILE=/models/AutoGLM-Phone-9B.sha256 \
#     nvcr.io/nvidia/tritonserver:26.04-vllm-python-py3 \
#     bash scripts/gpu-acceptance.sh --model autoglm-phone-9b
#
# Steps: detect the SKU; verify the checkpoint by sha256 and check the memory fit
# (`autoglm build vllm-profile`), install the version into a Triton model repository; check
# model.json against the image's vLLM; start Triton and wait for the model; check the served
# config against the tensor contract; start the façade (`autoglm serve`, OpenAI front door);
# send the agent's call (system prompt, a 1080x2400 screenshot, text, streamed) and print the
# answer, the token counts and the speed.
#
# Environment: MODEL_DIR (the AutoGLM-Phone-9B folder, required), SHA256_FILE (the publisher's
# sha256sum list; default: the last install's manifest, else the checksums are recorded),
# OUT (default /tmp/autoglm-acceptance-vllm), TP (default: the SKU's), SKU (default: detected),
# FACADE_MODEL (the `autoglm serve --model` value; default
# NAME=TRITON_MODEL:VERSION_DIR,engine=vllm,max_context_tokens=…,max_output_tokens=3000,…),
# DRY_RUN=1 (same as --dry-run: print the commands, run nothing).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN="${DRY_RUN:-0}"
MODEL_DIR="${MODEL_DIR:-}"
OUT="${OUT:-/tmp/autoglm-acceptance-vllm}"
TP="${TP:-}"
SKU="${SKU:-}"
SHA256_FILE="${SHA256_FILE:-}"
TRITON_MODEL=autoglm-phone-9b
REPO_DIR="$OUT/repo"
VENV="$OUT/venv"
VPY="$VENV/bin/python"
TRITON_GRPC=127.0.0.1:8001
FACADE_GRPC=127.0.0.1:50051
FACADE_OPENAI=127.0.0.1:18000
# The engine never reaches the Hugging Face Hub (it loads the verified folder only) nor vLLM's
# usage-stats server (vllm/envs.py VLLM_NO_USAGE_STATS / DO_NOT_TRACK).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1

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

[ -n "$MODEL_DIR" ] || { echo "set MODEL_DIR to the AutoGLM-Phone-9B checkpoint folder" >&2; exit 2; }
if [ "$DRY_RUN" != 1 ]; then
  [ -f "$MODEL_DIR/config.json" ] || { echo "no config.json in $MODEL_DIR" >&2; exit 2; }
  [ -f /opt/tritonserver/backends/vllm/model.py ] \
    || { echo "no vLLM backend in /opt/tritonserver/backends/vllm: wrong image" >&2; exit 2; }
fi

PIDS=()
cleanup() {
  # Only what this script started, newest first (the façade, then Triton).
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill "${PIDS[i]}" 2>/dev/null || true
    wait "${PIDS[i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT

say "versions inside this image (recorded in the manifest)"
run nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader
py_step "print the image's vLLM and Triton versions" python3 - <<'PY'
import os, vllm
print(f"vLLM {vllm.__version__}; Triton container {os.environ.get('NVIDIA_TRITON_SERVER_VERSION')}")
PY

say "the façade in its own venv (the image's vLLM, torch and transformers stay untouched)"
run python3 -m venv --system-site-packages "$VENV"
run "$VENV/bin/pip" install --no-deps -e "$REPO_ROOT"
# The façade's runtime pins from pyproject.toml, less the CPU-engine/build stack (torch "+cpu"
# exists only on the CPU hosts; ModelOpt, pytriton, numpy and transformers come from the image).
py_step "pip install pyproject's runtime pins but the CPU stack" "$VPY" - "$REPO_ROOT" <<'PY'
import subprocess, sys, tomllib, re
deps = tomllib.load(open(sys.argv[1] + "/pyproject.toml", "rb"))["project"]["dependencies"]
skip = {"torch", "nvidia-modelopt", "nvidia-pytriton", "numpy", "transformers", "gguf",
        "accelerate", "pandas", "pyarrow"}
keep = [d for d in deps if re.split(r"[\[<>=!~ ]", d, maxsplit=1)[0] not in skip]
subprocess.run([sys.executable, "-m", "pip", "install", *keep], check=True)
PY

say "detect the SKU"
if [ -z "$SKU" ]; then
  if [ "$DRY_RUN" = 1 ]; then
    SKU=l4; echo "+ (detect with nvidia-smi; dry run assumes $SKU)"
  else
    SKU="$("$VPY" - <<'PY'
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
GPU_MIB=""
if [ "$DRY_RUN" != 1 ]; then
  GPU_MIB="$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | sort -n | head -1)"
fi
echo "SKU: $SKU${GPU_MIB:+ ($GPU_MIB MiB per GPU)}"

say "verify the checkpoint, check the memory fit, install the version"
PROFILE=("$VPY" -m autoglm.build_engine.cli vllm-profile --model-dir "$MODEL_DIR" --sku "$SKU"
  --out "$REPO_DIR")
[ -z "$TP" ] || PROFILE+=(--tp "$TP")
[ -z "$GPU_MIB" ] || PROFILE+=(--gpu-memory-mib "$GPU_MIB")
[ -z "$SHA256_FILE" ] || PROFILE+=(--sha256-file "$SHA256_FILE")
run "${PROFILE[@]}"
if [ "$DRY_RUN" = 1 ]; then
  VDIR="$REPO_DIR/$TRITON_MODEL/1"
else
  VDIR="$(find "$REPO_DIR/$TRITON_MODEL" -mindepth 1 -maxdepth 1 -name '[0-9]*' -type d \
    | sort -V | tail -1)"
fi
echo "version: $VDIR"

say "model.json against the vLLM of this image (AsyncEngineArgs fields)"
py_step "every model.json key is an AsyncEngineArgs field" python3 - "$VDIR/model.json" <<'PY'
import dataclasses, json, sys
import vllm
from vllm.engine.arg_utils import AsyncEngineArgs
fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
keys = set(json.load(open(sys.argv[1])))
unknown = sorted(keys - fields)
if unknown:
    sys.exit(f"model.json keys unknown to vLLM {vllm.__version__}: {unknown}")
print(f"model.json: {len(keys)} keys, all AsyncEngineArgs fields of vLLM {vllm.__version__}")
PY

say "Triton with the vLLM backend (logs: $OUT/triton.log)"
TRITON=(tritonserver --model-repository="$REPO_DIR" --model-control-mode=explicit
  --load-model="$TRITON_MODEL" --grpc-address=127.0.0.1 --grpc-port=8001
  --http-address=127.0.0.1 --http-port=8000 --metrics-address=127.0.0.1 --metrics-port=8002
  --exit-timeout-secs=30)
if [ "$DRY_RUN" = 1 ]; then
  run "${TRITON[@]}"
else
  "${TRITON[@]}" >"$OUT/triton.log" 2>&1 &
  PIDS+=("$!")
fi
py_step "wait for the model, then check its served config" \
  "$VPY" - "$TRITON_GRPC" "$TRITON_MODEL" "${PIDS[0]:-0}" "$OUT/triton.log" <<'PY'
import os, sys, time
import tritonclient.grpc as grpcclient
from autoglm.triton_models.vllm import contract_mismatches
target, model, pid, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]


def alive(pid):  # a started child that exited is gone or a zombie ("Z") until bash reaps it
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


client = grpcclient.InferenceServerClient(target)
deadline = time.monotonic() + 1800  # 20 GB of weights, then CUDA graphs: minutes
while True:
    try:
        if client.is_model_ready(model):
            break
    except Exception:
        pass
    if not alive(pid):
        sys.exit(f"tritonserver exited; see {log}")
    if time.monotonic() > deadline:
        sys.exit(f"{model} not ready after 30 min; see {log}")
    time.sleep(2)
problems = contract_mismatches(client.get_model_config(model).config)
if problems:
    sys.exit("served config differs from vllm_contract: " + "; ".join(problems))
print(f"{model} ready; its served config matches the tensor contract")
PY

say "the façade: autoglm serve (OpenAI front door on $FACADE_OPENAI; logs: $OUT/facade.log)"
# The façade's model: the vLLM tensor contract (engine=vllm), the tokenizer, chat template and
# config.json of the installed version, and the profile's limits (model.json).
MAX_LEN=25480
MAX_PIXELS=5000000
if [ "$DRY_RUN" != 1 ]; then
  read -r MAX_LEN MAX_PIXELS < <("$VPY" -c 'import json, sys; a = json.load(open(sys.argv[1]))
print(a["max_model_len"], a["mm_processor_kwargs"]["max_pixels"])' "$VDIR/model.json")
fi
FACADE_MODEL="${FACADE_MODEL:-$TRITON_MODEL=$TRITON_MODEL:$VDIR,engine=vllm,max_context_tokens=$MAX_LEN,max_output_tokens=3000,image_max_pixels=$MAX_PIXELS}"
FACADE=("$VENV/bin/autoglm" serve --insecure-dev --triton "$TRITON_GRPC" --listen "$FACADE_GRPC"
  --openai-listen "$FACADE_OPENAI" --metrics-listen '' --model "$FACADE_MODEL")
if [ "$DRY_RUN" = 1 ]; then
  run "${FACADE[@]}"
else
  "${FACADE[@]}" >"$OUT/facade.log" 2>&1 &
  PIDS+=("$!")
fi
py_step "wait for the façade's /readyz" "$VPY" - "$FACADE_OPENAI" "${PIDS[1]:-0}" <<'PY'
import os, sys, time, urllib.request
url, pid = f"http://{sys.argv[1]}/readyz", int(sys.argv[2])


def alive(pid):  # as above: gone, or a zombie until bash reaps it
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


deadline = time.monotonic() + 120
while True:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if not alive(pid):
        sys.exit("autoglm serve exited; see facade.log")
    if time.monotonic() > deadline:
        sys.exit("the façade is not ready after 120 s; see facade.log")
    time.sleep(1)
print("façade ready")
PY

say "the agent's call: system prompt + 1080x2400 screenshot + text, streamed"
run "$VPY" "$REPO_ROOT/scripts/agent_screenshot_call.py" --base-url "http://$FACADE_OPENAI/v1" \
  --model "$TRITON_MODEL"

say "vLLM's own view (Triton metrics, vllm:*)"
if [ "$DRY_RUN" != 1 ]; then
  "$VPY" -c 'import urllib.request as u; print("\n".join(l for l in u.urlopen("http://127.0.0.1:8002/metrics").read().decode().splitlines() if l.startswith(("vllm:time_to_first_token_seconds_sum", "vllm:prompt_tokens_total", "vllm:generation_tokens_total"))))' || true
fi
