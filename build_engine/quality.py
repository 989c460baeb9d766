"""The quality gate: does the quantized model still predict like the base model?

Two numbers on a local held-out text, both computed with the same token chunks:
- perplexity ratio = ppl(quantized) / ppl(base) (1.0 = no loss);
- greedy next-token agreement = share of positions where both models' argmax token is equal.
The measurement (`score`, torch) is kept apart from the decision (`judge`, pure); the result is a
dataclass written into the build report (quality.json, then manifest.json).

Each measurement records the dtype the model computed in (`Scores.dtype`): the quantized model is
scored in the dtype its engine computes in (quantize.py `score_dtypes`), so an fp16 overflow the
engine would hit shows up here (CPU torch runs bf16 and fp16 matmuls), and the report says which.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Defaults: loose enough for fake-quantized FP8 / INT8 on a 135M model measured on CPU (see
# docs/build.md for the measured figures), tight enough to catch a broken calibration (a wrong
# scale typically sends the ratio far above 2 and agreement below 50 %).
DEFAULT_MAX_PPL_RATIO = 1.15
DEFAULT_MIN_TOKEN_AGREEMENT = 0.85


class QualityGateError(RuntimeError):
    """The quantized model crossed a quality threshold (or no measurement exists)."""


@dataclass(frozen=True, slots=True)
class QualityThresholds:
    max_ppl_ratio: float = DEFAULT_MAX_PPL_RATIO
    min_token_agreement: float = DEFAULT_MIN_TOKEN_AGREEMENT

    def validate(self) -> None:
        if not (math.isfinite(self.max_ppl_ratio) and self.max_ppl_ratio >= 1.0):
            raise ValueError(f"max_ppl_ratio: {self.max_ppl_ratio!r} must be a number >= 1.0")
        if not 0.0 <= self.min_token_agreement <= 1.0:
            raise ValueError(
                f"min_token_agreement: {self.min_token_agreement!r} must be within [0, 1]"
            )


@dataclass(frozen=True, slots=True)
class Scores:
    """One model's measurement on the held-out chunks."""

    nll_sum: float
    tokens: int
    predictions: tuple[int, ...]  # argmax next token at every scored position, chunk by chunk
    dtype: str = "float32"  # the model's parameter dtype while scoring (torch name)

    @property
    def perplexity(self) -> float:
        mean = self.nll_sum / self.tokens
        return math.inf if mean > 700 else math.exp(mean)  # exp overflows past ~709


@dataclass(frozen=True, slots=True)
class QualityResult:
    precision: str
    base_ppl: float
    quant_ppl: float
    ppl_ratio: float
    token_agreement: float
    tokens: int
    max_ppl_ratio: float
    min_token_agreement: float
    passed: bool
    reasons: tuple[str, ...] = ()
    # The dtypes the base and the quantized model were scored in (reports written before the
    # dtype was recorded were scored in float32).
    base_dtype: str = "float32"
    dtype: str = "float32"

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> QualityResult:
        data = dict(data)
        data["reasons"] = tuple(data.get("reasons", ()))  # type: ignore[arg-type]
        return cls(**data)  # type: ignore[arg-type]


def judge(
    precision: str, base: Scores, quant: Scores, thresholds: QualityThresholds
) -> QualityResult:
    """Compare two measurements of the same chunks against the thresholds."""
    thresholds.validate()
    if base.tokens != quant.tokens or len(base.predictions) != len(quant.predictions):
        raise ValueError("base and quantized scores cover different tokens")
    ratio = quant.perplexity / base.perplexity
    same = sum(a == b for a, b in zip(base.predictions, quant.predictions, strict=True))
    agreement = same / len(base.predictions)
    return apply_thresholds(
        QualityResult(
            precision=precision,
            base_ppl=round(base.perplexity, 4),
            quant_ppl=round(quant.perplexity, 4),
            ppl_ratio=round(ratio, 4),
            token_agreement=round(agreement, 4),
            tokens=base.tokens,
            max_ppl_ratio=thresholds.max_ppl_ratio,
            min_token_agreement=thresholds.min_token_agreement,
            passed=True,
            base_dtype=base.dtype,
            dtype=quant.dtype,
        ),
        thresholds,
    )


def apply_thresholds(result: QualityResult, thresholds: QualityThresholds) -> QualityResult:
    """Re-judge a recorded result against (possibly different) thresholds."""
    thresholds.validate()
    reasons: list[str] = []
    if not result.ppl_ratio <= thresholds.max_ppl_ratio:
        reasons.append(
            f"perplexity ratio {result.ppl_ratio:.4f} > {thresholds.max_ppl_ratio} "
            f"(base {result.base_ppl:.3f} in {result.base_dtype}, {result.precision} "
            f"{result.quant_ppl:.3f} in {result.dtype})"
        )
    if not result.token_agreement >= thresholds.min_token_agreement:
        reasons.append(
            f"greedy next-token agreement {result.token_agreement:.2%} < "
            f"{thresholds.min_token_agreement:.0%}"
        )
    return QualityResult(
        **{
            **asdict(result),
            "max_ppl_ratio": thresholds.max_ppl_ratio,
            "min_token_agreement": thresholds.min_token_agreement,
            "passed": not reasons,
            "reasons": tuple(reasons),
        }
    )


def enforce(result: QualityResult) -> QualityResult:
    """Raise QualityGateError when the result did not pass."""
    if not result.passed:
        raise QualityGateError(
            f"quality gate failed for {result.precision}: " + "; ".join(result.reasons)
        )
    return result


def write_report(path: Path, result: QualityResult) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    tmp.replace(path)
    return path


def read_report(path: Path) -> QualityResult:
    try:
        return QualityResult.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise QualityGateError(f"no quality report at {path}: run quantize first") from None
    except (OSError, ValueError, TypeError) as exc:
        raise QualityGateError(f"unreadable quality report {path}: {exc}") from None


# ---- measurement (torch) -------------------------------------------------------------------


def score(
    model: torch.nn.Module,
    chunks: Sequence[Sequence[int]],
    *,
    on_chunk: Callable[[], None] | None = None,
) -> Scores:
    """Sum of next-token NLL and the argmax predictions of `model` over token chunks, computed in
    the model's own dtype (the logits are upcast to fp32 only for the NLL)."""
    import torch
    import torch.nn.functional as F

    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    nll = 0.0
    tokens = 0
    preds: list[int] = []
    with torch.no_grad():
        for chunk in chunks:
            ids = torch.tensor([list(chunk)], dtype=torch.long)  # [1, T]
            logits = model(input_ids=ids).logits[0, :-1].float()  # [T-1, vocab]
            target = ids[0, 1:]  # [T-1]
            nll += F.cross_entropy(logits, target, reduction="sum").item()
            tokens += target.numel()
            preds.extend(logits.argmax(-1).tolist())
            if on_chunk is not None:
                on_chunk()
    if tokens == 0:
        raise ValueError("held-out text gave no tokens to score")
    return Scores(nll, tokens, tuple(preds), dtype)
