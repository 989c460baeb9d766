"""Write the façade's runtime requirements (pyproject.toml's pins) less what a GPU image brings.

Inside NVIDIA's Triton images torch, TensorRT-LLM / vLLM, ModelOpt, numpy and transformers come
with the image and must stay its own (torch "+cpu" exists only on CPU hosts). The rest is what
`autoglm serve` needs in its venv. For an offline GPU host, on a connected host inside the same
image (the wheels must match its Python and platform):

    python3 scripts/facade_requirements.py --out req.txt
    pip download -d wheelhouse -r req.txt

then `scripts/gpu-acceptance.sh --wheelhouse wheelhouse` installs them with `--no-index`.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

IMAGE_STACK = frozenset(
    {"torch", "nvidia-modelopt", "nvidia-pytriton", "numpy", "transformers", "accelerate"}
    | {"pandas", "pyarrow"}  # ModelOpt's, pinned for numpy < 2 on CPU hosts only
)


def facade_requirements(pyproject: Path) -> list[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [d for d in deps if re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0] not in IMAGE_STACK]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--out", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    text = "\n".join(facade_requirements(args.root / "pyproject.toml")) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
