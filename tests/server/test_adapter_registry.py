"""The façade's reading of the adapter registry at start (server/adapters.py `load_adapters`):
a registered adapter (a real PEFT adapter made in-process, registered by the build side's `add`)
is served with its task id and arrays; one whose converted file no longer matches its recorded
sha256 is refused, named, and not served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoglm.build_engine import adapters as ad
from autoglm.build_engine.tiny_lora import make_adapter
from autoglm.server.adapters import load_adapters

BASE = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def registry(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo") / "adapters"
    for i, name in enumerate(("good", "changed")):
        source = make_adapter(model_dir, tmp_path_factory.mktemp("lora") / name, seed=i + 1)
        ad.add(root, name, base=BASE, base_dir=model_dir, source=source)
    path = root / "changed" / ad.LORA_WEIGHTS_FILE
    weights = np.load(path)
    weights[0, 0, 0] += 1
    np.save(path, weights)
    return root


def test_verified_adapters_are_served_and_changed_ones_refused(registry: Path) -> None:
    served, refused = load_adapters(registry)
    [good] = served
    entry = ad.load_registry(registry)["good"]
    assert (good.name, good.base, good.task_id) == ("good", BASE, entry.task_id)
    weights, config = good.arrays()  # the engine's layout, without the saved batch dim
    assert weights.dtype == np.float16 and weights.ndim == 2
    assert config.dtype == np.int32 and config.shape == (weights.shape[0], 3)
    [why] = refused
    assert why.startswith("adapter changed: refused, not served: sha256")


def test_a_file_changed_after_start_is_never_sent(registry: Path, tmp_path: Path) -> None:
    [good], _ = load_adapters(registry)
    original = good.weights_file.read_bytes()
    try:
        weights = np.load(good.weights_file)
        weights[0, 0, 1] += 1
        np.save(good.weights_file, weights)
        with pytest.raises(ValueError, match="not the registered file"):
            good.arrays()
    finally:
        good.weights_file.write_bytes(original)


def test_no_registry_folder_is_no_adapters(tmp_path: Path) -> None:
    assert load_adapters(tmp_path / "absent") == ([], [])
