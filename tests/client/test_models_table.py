"""The `autoglm-client models` table (client/_models_table.py): the ADAPTERS column with none,
some and many adapters, kept to a width on a terminal."""

from __future__ import annotations

import pytest

from autoglm.client import ModelInfo
from autoglm.client._models_table import HEADER, adapters_cell, models_table

SMOL = ModelInfo("smollm2", "cpu_reference", 2048, 512, 128, True)
MANY = tuple(f"tenant-{i:02d}" for i in range(40))  # "tenant-00" .. "tenant-39", 9 chars each


def test_no_adapters_is_a_dash_not_an_empty_cell() -> None:
    assert adapters_cell(()) == "-"
    assert adapters_cell((), max_width=10) == "-"


def test_adapters_are_one_comma_separated_token() -> None:
    assert adapters_cell(("tenant-a", "tenant-b")) == "tenant-a,tenant-b"
    assert adapters_cell(("tenant-a", "tenant-b"), max_width=17) == "tenant-a,tenant-b"  # fits


def test_without_a_width_every_adapter_is_listed() -> None:
    assert adapters_cell(MANY).split(",") == list(MANY)


@pytest.mark.parametrize("width", [20, 30, 48, 100])
def test_a_long_list_is_cut_to_the_width_and_the_rest_counted(width: int) -> None:
    cell = adapters_cell(MANY, max_width=width)
    *shown, more = cell.split(",")
    assert len(cell) <= width
    assert shown == list(MANY[: len(shown)]) and shown  # leading names, in order, at least one
    assert more == f"+{len(MANY) - len(shown)} more"
    # As many names as fit: one more would not.
    longer = ",".join([*MANY[: len(shown) + 1], f"+{len(MANY) - len(shown) - 1} more"])
    assert len(longer) > width


def test_the_first_name_is_kept_even_when_wider_than_the_width() -> None:
    assert adapters_cell(("a-very-long-adapter-name", "b"), max_width=5) == (
        "a-very-long-adapter-name,+1 more"
    )


def test_the_last_name_replaces_the_count_when_it_fits() -> None:
    # "a,b,c" is 5 characters: with width 5 all are shown, never "a,b,+1 more".
    assert adapters_cell(("a", "b", "c"), max_width=5) == "a,b,c"
    assert adapters_cell(("a", "b", "c"), max_width=4) == "a,+2 more"


def test_table_has_adapters_as_the_last_column() -> None:
    with_adapters = ModelInfo("glm", "vllm", 8192, 1024, 256, False, 4, adapters=("x", "y"))
    assert models_table([SMOL, with_adapters]) == [
        HEADER,
        "smollm2\tcpu_reference\t2048\t512\t128\tyes\t0\t-",
        "glm\tvllm\t8192\t1024\t256\tno\t4\tx,y",
    ]
    assert HEADER.split("\t")[-1] == "ADAPTERS"


def test_every_row_has_as_many_cells_as_the_header() -> None:
    rows = models_table(
        [SMOL, ModelInfo("m", "vllm", 1, 1, 1, True, adapters=MANY)], adapters_width=48
    )
    assert {len(row.split("\t")) for row in rows} == {len(HEADER.split("\t"))}
    assert rows[2].endswith("more") and len(rows[2].split("\t")[-1]) <= 48


def test_no_models_is_the_header_alone() -> None:
    assert models_table([]) == [HEADER]
