"""Per-version parameters of one Triton model config, and the test-only failure switch.

Triton gives a model one config for all its loaded versions. A config may carry `KEY@v<N>`
entries: version N's own value of KEY when one Triton model serves several versions whose
parameters differ; `for_version` gives one version its own view (a config without such entries
is returned as it is). The façade's canaries do not need them: a canary runs as its own Triton
model with its own config (server/engine/model_versions.py).

`TEST_ONLY_FAIL` is a switch for tests only (tests/integration/test_canary*.py): a version whose
config sets it to "true" answers every request with an error, so that the rollback guard can be
tested against a real failing canary. It is never set by the renderer or the installer.
"""

from __future__ import annotations

import copy
from typing import Any

TEST_ONLY_FAIL = "test_only_fail_every_request"


def for_version(config: dict[str, Any], version: int | str) -> dict[str, Any]:
    """`config` (Triton's JSON form) with version `version`'s own parameter values in place."""
    params = config.get("parameters") or {}
    suffix = f"@v{version}"
    out = copy.deepcopy(config)
    mine = {k.removesuffix(suffix): v for k, v in params.items() if k.endswith(suffix)}
    out["parameters"] = {k: v for k, v in params.items() if "@v" not in k} | mine
    return out


def fails_on_purpose(config: dict[str, Any]) -> bool:
    """True when the test-only failure switch is on for this config (already `for_version`)."""
    value = (config.get("parameters") or {}).get(TEST_ONLY_FAIL, {}).get("string_value", "")
    return value.strip().lower() == "true"
