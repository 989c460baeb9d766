"""The `autoglm-client models` table: pure formatting, no I/O.

One tab-separated line per model, so `cut -f` keeps working; ADAPTERS is the last column so a
long list never pushes the other columns about. ListModels carries only the adapters' names
(ModelInfo.adapters, proto/autoglm/v1/text_generation.proto), so that is what the table shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from autoglm.client._types import ModelInfo

__all__ = ["HEADER", "NO_ADAPTERS", "TERMINAL_ADAPTERS_WIDTH", "adapters_cell", "models_table"]

HEADER = "NAME\tENGINE\tCONTEXT\tMAX_OUTPUT\tDEFAULT_MAX\tCHAT\tIMAGES\tADAPTERS"
NO_ADAPTERS = "-"  # an empty last cell would read as a missing column
# On a terminal, the ADAPTERS cell is kept to about this many characters so that one model with
# many adapters stays one screen line; the rest are counted ("+N more") and `--json`, or a pipe,
# lists them all.
TERMINAL_ADAPTERS_WIDTH = 48


def adapters_cell(adapters: Sequence[str], max_width: int | None = None) -> str:
    """The adapters joined by "," (names are [A-Za-z0-9._-] only: build_engine/adapters.py
    check_name, so the list stays one unambiguous token), or NO_ADAPTERS.

    With `max_width`, as many leading names as fit are kept (at least one) and the others are
    counted: "a,b,+3 more".
    """
    if not adapters:
        return NO_ADAPTERS
    full = ",".join(adapters)
    if max_width is None or len(full) <= max_width:
        return full
    shown = [adapters[0]]
    for name in adapters[1:]:
        rest = len(adapters) - len(shown) - 1
        candidate = ",".join([*shown, name, f"+{rest} more"]) if rest else ",".join([*shown, name])
        if len(candidate) > max_width:
            break
        shown.append(name)
    return ",".join([*shown, f"+{len(adapters) - len(shown)} more"])


def models_table(models: Iterable[ModelInfo], *, adapters_width: int | None = None) -> list[str]:
    """The header line and one line per model (without newlines)."""
    lines = [HEADER]
    for m in models:
        chat = "yes" if m.has_chat_template else "no"
        cells = [
            m.name,
            m.engine,
            m.max_context_tokens,
            m.max_output_tokens,
            m.default_max_tokens,
            chat,
            m.max_images,
            adapters_cell(m.adapters, adapters_width),
        ]
        lines.append("\t".join(map(str, cells)))
    return lines
