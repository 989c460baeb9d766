"""layout_prompt: placeholder expansion and 3-D positions, checked against transformers' own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoglm.triton_models.cpu_vl.positions import layout_prompt

IMAGE = 99
START, END = 97, 98


@pytest.fixture(scope="module")
def glm4v_model(vlm_dir: Path):
    from transformers import Glm4vForConditionalGeneration

    return Glm4vForConditionalGeneration.from_pretrained(vlm_dir).eval()


def test_each_placeholder_becomes_its_images_tokens() -> None:
    layout = layout_prompt(
        [1, START, IMAGE, END, 2], image_token_id=IMAGE, grids=[(1, 4, 6)], merge_size=2
    )
    assert layout.input_ids == (1, START, *[IMAGE] * 6, END, 2)  # 1·4·6 / 2² = 6


def test_positions_match_get_rope_index_for_template_shaped_prompts(glm4v_model) -> None:
    config = glm4v_model.config
    image, start, end = (
        config.image_token_id,
        config.image_start_token_id,
        config.image_end_token_id,
    )
    ids = [5, 6, start, image, end, 7, 8, start, image, end, 9]
    grids = [(1, 6, 4), (1, 4, 10)]
    layout = layout_prompt(ids, image_token_id=image, grids=grids, merge_size=2)
    input_ids = torch.tensor([layout.input_ids])
    expected, deltas = glm4v_model.model.get_rope_index(
        input_ids, (input_ids == image).int(), image_grid_thw=torch.tensor(grids)
    )
    assert torch.equal(layout.position_ids, expected[:, 0])  # [3, len]
    # The first generated token: plain position len(prompt) shifted by rope_deltas.
    assert layout.next_position == len(layout.input_ids) + int(deltas)
    assert glm4v_model.model.rope_deltas is None  # get_rope_index keeps no state


def test_adjacent_placeholders_are_two_images() -> None:
    layout = layout_prompt(
        [IMAGE, IMAGE], image_token_id=IMAGE, grids=[(1, 2, 2), (1, 2, 4)], merge_size=2
    )
    assert layout.input_ids == (IMAGE,) * 3
    # first image at 0 (1×1 merged), the second starts after max(1, 1) = 1 and is 1×2.
    assert layout.position_ids.tolist() == [[0, 1, 1], [0, 1, 1], [0, 1, 2]]
    assert layout.next_position == 3


def test_text_only_prompt_counts_up() -> None:
    layout = layout_prompt([4, 5, 6], image_token_id=IMAGE, grids=[], merge_size=2)
    assert layout.position_ids.tolist() == [[0, 1, 2]] * 3
    assert layout.next_position == 3


def test_a_count_mismatch_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="1 image placeholders for 2 images"):
        layout_prompt([IMAGE], image_token_id=IMAGE, grids=[(1, 2, 2)] * 2, merge_size=2)
