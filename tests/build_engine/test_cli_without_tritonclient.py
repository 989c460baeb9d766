"""`autoglm build` loads and plans without tritonclient (NVIDIA's TensorRT-LLM container may not
ship it): only validating a rendered Triton config needs it, and that says so by name."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

# Runs in a fresh interpreter: a meta-path finder makes every `tritonclient` import fail as it
# would where the package is not installed, then the build CLI is imported and run.
SCRIPT = textwrap.dedent(
    """
    import io, json, sys

    class NoTritonclient:
        def find_spec(self, name, path=None, target=None):
            if name == "tritonclient" or name.startswith("tritonclient."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoTritonclient())
    from rich.console import Console
    from autoglm.build_engine.cli import main

    out = io.StringIO()
    console = Console(file=out, width=400)
    codes = [main(["skus"], console), main(sys.argv[1:], console)]
    # Validating a rendered config is where tritonclient is really needed.
    from autoglm.triton_models.render import TemplateError, parse_model_config
    try:
        parse_model_config('name: "x"')
        refusal = None
    except TemplateError as exc:
        refusal = str(exc)
    print(json.dumps({
        "codes": codes,
        "out": out.getvalue(),
        "refusal": refusal,
        "loaded": sorted(m for m in sys.modules if m.startswith("tritonclient")),
    }))
    """
)


def test_build_cli_skus_and_plan_without_tritonclient(tmp_path: Path) -> None:
    plan_argv = [
        "plan",
        "--model-dir",
        str(tmp_path / "model"),
        "--sku",
        "h100-sxm",
        "--precision",
        "fp8",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *plan_argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0, 0], result["out"]
    assert "h100-sxm" in result["out"] and "b200" in result["out"]
    assert (tmp_path / "out" / "plan.json").is_file()
    assert result["loaded"] == []
    assert result["refusal"] is not None
    assert "tritonclient" in result["refusal"]
