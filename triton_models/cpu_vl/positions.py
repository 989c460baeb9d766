"""Image-token expansion and GLM-4.1V's 3-D rotary positions, computed per request.

Pure (torch only). Why not the model's own bookkeeping: `Glm4vModel.forward` (transformers 5.14,
`compute_3d_position_ids`) caches `rope_deltas` on the module after a prefill and reuses it for
later decode steps, so two requests decoding in parallel threads would read each other's
offsets. The runner passes `position_ids` on every call instead, which skips that code path
(`forward` computes positions only when `position_ids is None`), and keeps each request's next
position in its own state.

The layout follows transformers' `Glm4vProcessor` and `Glm4vModel.get_rope_index`:

- Each `<|image|>` placeholder becomes `t·h·w / merge²` copies of itself, where (t, h, w) is the
  image's patch grid (`replace_image_token`), in placeholder order.
- A text token at running position p gets (p, p, p); p advances by 1.
- An image whose merged grid is (t, H, W) = (t, h/merge, w/merge) starting at p gets, for token
  (i, j, k) in row-major order, (p + i, p + j, p + k); p then advances by max(H, W).
- After the prompt, generated token n (from 0) gets next_position + n on all three axes
  (`rope_deltas` = next_position − prompt length, added to the plain position).

get_rope_index groups *runs* of image tokens, so two placeholders with nothing between them
would be read as one image there; here each placeholder is its own image (the chat template
always wraps one in `<|begin_of_image|>…<|end_of_image|>`, where both agree; a test checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["PromptLayout", "layout_prompt"]


@dataclass(frozen=True, slots=True)
class PromptLayout:
    input_ids: tuple[int, ...]  # the prompt with every placeholder expanded
    position_ids: torch.Tensor  # [3, len(input_ids)] int64: temporal, height, width
    next_position: int  # the position of the first generated token (all three axes)


def layout_prompt(
    token_ids: Sequence[int],
    *,
    image_token_id: int,
    grids: Sequence[tuple[int, int, int]],
    merge_size: int,
) -> PromptLayout:
    """Expands the image placeholders of `token_ids` (one per entry of `grids`, in order).

    `grids` are the images' (t, h, w) patch grids as the image processor reports them
    (`image_grid_thw`). The caller checks that the counts match; a mismatch is a ValueError here.
    """
    placeholders = sum(1 for t in token_ids if t == image_token_id)
    if placeholders != len(grids):
        raise ValueError(f"{placeholders} image placeholders for {len(grids)} images")
    ids: list[int] = []
    pieces: list[torch.Tensor] = []  # [3, n] each
    text_run = 0  # pending text tokens, laid out in one arange
    position = 0
    images = iter(grids)

    def flush_text() -> None:
        nonlocal text_run, position
        if text_run:
            pieces.append(torch.arange(position, position + text_run).expand(3, -1))
            position += text_run
            text_run = 0

    for token in token_ids:
        if token != image_token_id:
            ids.append(token)
            text_run += 1
            continue
        flush_text()
        t, h, w = next(images)
        merged_h, merged_w = h // merge_size, w // merge_size
        ids.extend([image_token_id] * (t * merged_h * merged_w))
        grid_t, grid_h, grid_w = torch.meshgrid(
            torch.arange(t), torch.arange(merged_h), torch.arange(merged_w), indexing="ij"
        )
        pieces.append(torch.stack([grid_t, grid_h, grid_w]).reshape(3, -1) + position)
        position += max(merged_h, merged_w)
    flush_text()
    positions = torch.cat(pieces, dim=1) if pieces else torch.zeros(3, 0, dtype=torch.long)
    next_position = int(positions.max()) + 1 if positions.numel() else 0
    return PromptLayout(tuple(ids), positions.to(torch.long), next_position)
