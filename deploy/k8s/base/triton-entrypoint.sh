#!/bin/sh
# Start Triton for autoglm: the container's args are tritonserver flags; the façade↔Triton
# restricted-protocol secret is read here from the mounted Secret file and appended by
# tritonserver-secure.sh, so it never appears in the pod spec, an env var, or `kubectl describe`.
# (It does reach tritonserver's argv: Triton 2.x has no file-based form of
# --grpc-restricted-protocol. Only processes in this container can read that argv.)
#
# WORLD_SIZE = TP x PP GPUs. 1: exec tritonserver directly. >1: TensorRT-LLM's
# launch_triton_server.py --world_size starts one MPI rank per GPU (facts.md "Multi-GPU";
# NVIDIA/TensorRT-LLM triton_backend/scripts/launch_triton_server.py). That script takes no
# extra tritonserver flags, so it is pointed at tritonserver-secure.sh with --tritonserver.
set -eu

: "${WORLD_SIZE:?}" "${TRITON_SECRET_FILE:?}" "${TRITON_RESTRICTED_PROTOCOLS:?}"
if [ ! -s "$TRITON_SECRET_FILE" ]; then
  echo "triton-entrypoint: $TRITON_SECRET_FILE is missing or empty" >&2
  exit 2
fi
# Flags have no spaces (the manifests keep it that way); tritonserver-secure.sh splits on them.
AUTOGLM_TRITON_ARGS="$*"
export AUTOGLM_TRITON_ARGS

if [ "$WORLD_SIZE" -eq 1 ]; then
  exec /opt/autoglm/bin/tritonserver-secure.sh
fi

# launch_triton_server.py runs `mpirun ...` with subprocess.Popen and returns at once, so this
# shell stays PID 1: it forwards SIGTERM to mpirun (which signals every rank) and exits with it.
python3 "${TRTLLM_LAUNCH_SCRIPT:?}" \
  --world_size="$WORLD_SIZE" \
  --model_repo="${MODEL_REPO:?}" \
  --tritonserver=/opt/autoglm/bin/tritonserver-secure.sh \
  --tensorrt_llm_model_name="${TRITON_MODEL:?}" \
  --grpc_port=8001 --http_port=8000 --metrics_port=8002 \
  --exit_timeout="${EXIT_TIMEOUT_SECS:-25}"
sleep 2
mpirun_pid=$(pgrep -o -x mpirun || true)
if [ -z "$mpirun_pid" ]; then
  echo "triton-entrypoint: mpirun did not start" >&2
  exit 1
fi
trap 'kill -TERM "$mpirun_pid" 2>/dev/null || true' TERM INT
while kill -0 "$mpirun_pid" 2>/dev/null; do
  sleep 5 &
  wait $! || true
done
echo "triton-entrypoint: mpirun ($mpirun_pid) exited" >&2
exit 1
