"""`autoglm dev`'s OpenAI snippet pastes as it is: valid shell, a heredoc that ends, Python
that compiles, and no API key in it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from autoglm.server.devstack.dev import openai_help


def test_the_snippet_is_valid_shell_and_python(tmp_path: Path) -> None:
    text = openai_help(8000, Path("/ca.pem"), Path("/home/u/client.json"), "m")
    lines = text.splitlines()
    start = lines.index(".venv/bin/python - <<'EOF'")
    end = lines.index("EOF", start)  # the terminator at column 0, or the heredoc never ends
    compile("\n".join(lines[start + 1 : end]), "<snippet>", "exec")
    script = tmp_path / "snippet.sh"
    script.write_text("\n".join(line for line in lines if not line.startswith("  ")) + "\n")
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert 'base_url="https://localhost:8000/v1"' in text
    assert "export SSL_CERT_FILE=/ca.pem" in text
    assert "agm_" not in text  # the key is read from the profile when pasted, never printed


def test_nothing_without_the_front_door() -> None:
    assert openai_help(None, Path("/ca.pem"), Path("/p"), "m") == ""
