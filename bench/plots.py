"""PNG plots for people who would rather look than read (matplotlib, Agg backend, no display).

Per scenario: latency (TTFT p50/p99 and ITL p99) against output tokens/s, one line per path,
one point per load level (labelled), so the façade's cost reads as the gap between the lines:
direct, the gRPC API ("facade") and the OpenAI front door ("openai", SSE) (with `--floor`,
three more: the bare grpc.aio relay, the byte hop and the direct path again; report.FLOORS).
"""

from __future__ import annotations

from pathlib import Path

from autoglm.bench.report import BenchReport, RunResult

_STYLES = (
    ("direct", "o-"),
    ("facade", "s--"),
    ("openai", "D-"),
    ("relay", "^:"),
    ("hop", "v:"),
    ("control", "x-."),
    ("text", "P--"),  # the image scenario's text twin (image_runner.py)
)


def plot(report: BenchReport, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for scenario in dict.fromkeys(r.scenario for r in report.runs):
        runs = [r for r in report.runs if r.scenario == scenario]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for ax, (title, get) in zip(
            axes,
            (
                ("TTFT p50 (ms)", lambda r: r.summary.ttft_ms.p50),
                ("TTFT p99 (ms)", lambda r: r.summary.ttft_ms.p99),
                ("inter-token latency p99 (ms)", lambda r: r.summary.itl_ms.p99),
            ),
            strict=True,
        ):
            for path, style in _STYLES:
                pts: list[RunResult] = [r for r in runs if r.path == path]
                if not pts:
                    continue  # the floors: only with --floor; a path --paths left out
                xs = [r.summary.tokens_per_s for r in pts]
                ys = [get(r) for r in pts]
                ax.plot(xs, ys, style, label=path)
                for r, x, y in zip(pts, xs, ys, strict=True):
                    ax.annotate(
                        r.level, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
                    )
            if title.startswith("TTFT"):
                ax.set_yscale("log")  # saturated levels are orders of magnitude slower
            ax.set_xlabel("output tokens/s (all streams)")
            ax.set_ylabel(title)
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.suptitle(
            f"{scenario}: latency vs throughput, direct Triton vs the façade's gRPC API "
            "and OpenAI front door (same run)"
        )
        fig.tight_layout()
        path = out_dir / f"{scenario}-latency-vs-throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
