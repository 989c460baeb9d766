#!/bin/sh
# tritonserver + autoglm's flags + the restricted-protocol flag built from the mounted secret
# (server/engine/link.py EngineLink.triton_args(): header key "autoglm-facade").
set -eu
secret=$(cat "${TRITON_SECRET_FILE:?}")
# Word splitting of AUTOGLM_TRITON_ARGS is intended (see triton-entrypoint.sh).
# shellcheck disable=SC2086
exec "${TRITONSERVER_BIN:-/opt/tritonserver/bin/tritonserver}" "$@" $AUTOGLM_TRITON_ARGS \
  "--grpc-restricted-protocol=${TRITON_RESTRICTED_PROTOCOLS:?}:${TRITON_PROTOCOL_HEADER_KEY:-autoglm-facade}=${secret}"
