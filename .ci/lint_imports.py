"""Run import-linter (the contracts in pyproject.toml) on an import-true view of the repository.

The fixed top-level layout maps folders onto one namespace (pyproject's `package-dir`:
server/ is `autoglm.server`, bench/ is `autoglm.bench`, …), so no folder on disk is the
package `autoglm` that import-linter needs to walk. This builds that folder in a temporary
directory from hard links (the same files, nothing copied), puts it first on PYTHONPATH and runs
`lint-imports` there. Exit code: lint-imports'.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem: a copy does as well
        shutil.copy2(src, dst)


def build_view(dest: Path) -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    # Longest names last, so a sub-package's folder is placed inside its parent's view.
    for name, folder in sorted(config["package-dir"].items(), key=lambda kv: kv[0].count(".")):
        target = dest.joinpath(*name.split("."))
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(
            ROOT / folder,
            target,
            copy_function=_link,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="autoglm-import-view-") as tmp:
        view = Path(tmp)
        build_view(view)
        env = {**os.environ, "PYTHONPATH": str(view)}
        lint = Path(sys.executable).parent / "lint-imports"
        cmd = [str(lint), "--no-logo", "--no-cache", str(ROOT / "pyproject.toml")]
        return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main())
