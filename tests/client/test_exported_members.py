"""The public API is exactly `autoglm.client.__all__` (httpx `tests/test_exported_members.py`)."""

from __future__ import annotations

from types import ModuleType

import autoglm.client

INCLUDED_PRIVATE_MEMBERS = {"__version__"}


def _public_members() -> set[str]:
    names = set()
    for name, value in vars(autoglm.client).items():
        # Importing a submodule (e.g. `autoglm.client.cli`) binds it on the package; submodules
        # are reached by import path, not re-exported.
        if isinstance(value, ModuleType) and value.__name__.startswith("autoglm.client."):
            continue
        if not name.startswith("_") or name in INCLUDED_PRIVATE_MEMBERS:
            names.add(name)
    return names


def test_all_is_exact() -> None:
    assert set(autoglm.client.__all__) == _public_members()


def test_all_has_no_duplicates() -> None:
    # (Its order is ruff's RUF022 isort-style order, checked by `ruff check`.)
    assert len(set(autoglm.client.__all__)) == len(autoglm.client.__all__)


def test_every_exported_name_resolves() -> None:
    for name in autoglm.client.__all__:
        assert getattr(autoglm.client, name) is not None
