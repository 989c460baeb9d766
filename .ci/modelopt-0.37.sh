#!/usr/bin/env bash
# The quantize tests under the ModelOpt the TensorRT-LLM 1.2.x container ships.
#
# TensorRT-LLM 1.2.x pins nvidia-modelopt[torch]~=0.37.0 and transformers==4.57.1
# (NVIDIA/TensorRT-LLM requirements.txt); the project pins 0.47 (pyproject.toml). The two differ in
# the preset shape (dict vs list `quant_cfg`) and in INT8_WEIGHT_ONLY_CFG (build_engine/quantize.py).
# This job makes a throwaway venv holding only those releases (torchprofile is 0.37's one extra
# dependency) and layers it over the project's .venv for everything else (torch, accelerate, ...):
# the throwaway site-packages come first on sys.path, .venv's are added after them by a .pth file.
# AUTOGLM_EXPECT_MODELOPT makes test_quantize_config.py fail unless 0.37 was really imported.
#
# The prepared SmolLM2 folder was saved by transformers 5, whose tokenizer_config.json names the
# class TokenizersBackend; transformers 4.57 does not know it. The tests read a view of the folder
# (symlinks) whose tokenizer_config.json names PreTrainedTokenizerFast, the transformers 4 class
# for a tokenizer.json. A real model from its hub repo needs no such view.
#
# Usage: .ci/modelopt-0.37.sh [pytest args]   (MODELOPT037_VENV: where the venv lives)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${MODELOPT037_VENV:-${TMPDIR:-/tmp}/autoglm-modelopt-0.37}"
PINS=("nvidia-modelopt==0.37.*" "transformers==4.57.1" "huggingface-hub>=0.34,<1.0" "torchprofile>=0.0.4")
site_of() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

if [ ! -x "$VENV/bin/python" ]; then
    .venv/bin/python -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --no-deps "${PINS[@]}"
fi
echo "import site; site.addsitedir('$(site_of .venv/bin/python)')" \
    > "$(site_of "$VENV/bin/python")/zz_autoglm_project_venv.pth"

home="${AUTOGLM_HOME:-$HOME/.cache/autoglm}"
model="${AUTOGLM_MODEL_DIR:-$home/models/SmolLM2-135M-Instruct}"
view="$(mktemp -d)"
trap 'rm -rf "$view"' EXIT
for f in "$model"/*; do ln -s "$(realpath "$f")" "$view/"; done
rm "$view/tokenizer_config.json"
.venv/bin/python - "$model/tokenizer_config.json" "$view/tokenizer_config.json" <<'EOF'
import json
import sys

config = json.load(open(sys.argv[1]))
if config.get("tokenizer_class") == "TokenizersBackend":
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
json.dump(config, open(sys.argv[2], "w"), indent=2)
EOF

"$VENV/bin/python" -W ignore -c 'import modelopt, transformers; print(f"modelopt {modelopt.__version__}, transformers {transformers.__version__}")'
AUTOGLM_MODEL_DIR="$view" AUTOGLM_EXPECT_MODELOPT=0.37 \
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/build_engine/test_quantize_config.py tests/build_engine/test_quantize.py "$@"
