"""Render a comparison: Markdown (for PRs and terminals), JSON (for machines), self-contained HTML.

The HTML page embeds its plots as base64 PNG, so it can be mailed or stored as one artifact.
"""

from __future__ import annotations

import base64
import html
import io
import json

from .table import ComparisonRow

COLUMNS: list[tuple[str, str]] = [
    ("label", "model"),
    ("method", "method"),
    ("backend", "backend"),
    ("size_bytes", "size (MB)"),
    ("compression_ratio", "compression"),
    ("quantize_seconds", "quantize (s)"),
    ("peak_memory_bytes", "model memory (MB)"),
    ("logits_cosine", "logits cosine"),
    ("worst_token_cosine", "worst token"),
    ("perplexity_ratio", "ppl ratio"),
    ("top1_agreement", "top-1"),
    ("decode_tokens_per_second", "decode tok/s"),
    ("kernels", "kernels"),
    ("tasks", "task accuracy"),
    ("passed", "gate"),
]


def _cell(row: ComparisonRow, key: str) -> str:
    if row.error and key in ("logits_cosine", "perplexity_ratio"):
        return "failed"
    value = getattr(row, key)
    if value is None:
        return "-"
    if key.endswith("_bytes"):
        return f"{value / 1e6:.1f}"
    if key == "tasks":
        return ", ".join(f"{name} {score:.3f}" for name, score in value.items())
    if key == "passed":
        return "pass" if value else "FAIL"
    if key == "decode_tokens_per_second" and row.decode_spread is not None:
        return f"{value:.1f} ±{row.decode_spread * 50:.0f}%"  # half the max-min range, as a share of the median
    if key == "kernels":
        return value or "-"
    if isinstance(value, float):
        return f"{value:.{_DECIMALS.get(key, 1)}f}"
    return str(value)


# One precision per column, so numbers in a column line up (9.1 beside 13.8, not 9.0900 beside 13.8):
# similarity figures need four decimals to show differences, timings and sizes one.
_DECIMALS = {
    "logits_cosine": 4,
    "worst_token_cosine": 4,
    "perplexity_ratio": 4,
    "top1_agreement": 4,
    "compression_ratio": 2,
}


def environment_notes(rows: list[ComparisonRow]) -> list[str]:
    """Where the speed figures were measured, once per distinct environment, and what `kernels` means."""
    seen: list[str] = []
    for row in rows:
        env = row.environment
        if env:
            text = (
                f"benchmarks ran on {env.get('device', '?')} ({env.get('device_name', '?')}), "
                f"{env.get('torch_threads', '?')} torch threads, torch {env.get('torch', '?')}, "
                f"transformers {env.get('transformers', '?')}"
            )
            if text not in seen:
                seen.append(text)
    kinds = {row.environment.get("kernels", "") for row in rows if row.environment}
    seen += sorted(f"kernels {k}" for k in kinds if k.startswith(("simulated", "real")))
    if any(row.decode_spread is not None for row in rows):
        seen.append("decode tok/s: median of the runs, ± half their max-min range as a share of the median")
    return seen


def markdown(rows: list[ComparisonRow], title: str, notes: list[str]) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r, k) for k, _ in COLUMNS) + " |" for r in rows]
    failures = [r for r in rows if r.error]
    if failures:
        lines += ["", "## Failed methods", ""] + [f"- **{r.label}** ({r.method}): {r.error}" for r in failures]
    extra = [f"- {r.label}: {r.note}" for r in rows if r.note]
    if notes or extra:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes] + extra
    return "\n".join(lines) + "\n"


def plots(rows: list[ComparisonRow]) -> dict[str, bytes]:
    """PNG bytes: perplexity ratio vs size, decode speed, logits cosine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: dict[str, bytes] = {}
    ok = [r for r in rows if not r.error]
    sized = [(r.label, r.size_bytes / 1e6, r.perplexity_ratio) for r in ok if r.size_bytes and r.perplexity_ratio]
    if sized:
        fig, axis = plt.subplots(figsize=(6, 4))
        axis.scatter([s for _, s, _ in sized], [p for _, _, p in sized], color="tab:blue")
        for label, size, ratio in sized:
            axis.annotate(label, (size, ratio), fontsize=8, xytext=(4, 4), textcoords="offset points")
        axis.set(xlabel="size on disk (MB)", ylabel="perplexity ratio vs reference", title="Precision vs size")
        axis.grid(alpha=0.3)
        figures["precision_vs_size.png"] = _png(fig)
    for key, name, label in (
        ("decode_tokens_per_second", "decode_speed.png", "decode tokens/s (batch 1)"),
        ("logits_cosine", "logits_cosine.png", "mean logits cosine"),
    ):
        present = [r for r in ok if getattr(r, key) is not None]
        if present:
            fig, axis = plt.subplots(figsize=(6, 4))
            axis.bar([r.label for r in present], [getattr(r, key) for r in present], color="tab:green")
            axis.set(ylabel=label, title=label)
            if key == "logits_cosine":
                axis.set_ylim(min(getattr(r, key) for r in present) - 0.01, 1.0)
            axis.tick_params(axis="x", rotation=30, labelsize=8)
            fig.tight_layout()
            figures[name] = _png(fig)
    return figures


def _png(figure: object) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)  # type: ignore[attr-defined]
    plt.close(figure)  # type: ignore[arg-type]
    return buffer.getvalue()


def html_page(rows: list[ComparisonRow], title: str, notes: list[str], images: dict[str, bytes]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in COLUMNS)
    body = "".join(
        "<tr class='{}'>".format("failed" if r.error else "")
        + "".join(f"<td>{html.escape(_cell(r, k))}</td>" for k, _ in COLUMNS)
        + "</tr>"
        for r in rows
    )
    failures = "".join(f"<li><b>{html.escape(r.label)}</b>: {html.escape(r.error)}</li>" for r in rows if r.error)
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes + [f"{r.label}: {r.note}" for r in rows if r.note])
    pictures = "".join(
        f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, data in images.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#eee}}
tr.failed td{{background:#fdd}}figure{{display:inline-block;margin:1em}}</style></head>
<body><h1>{html.escape(title)}</h1><table><tr>{head}</tr>{body}</table>
{f"<h2>Failed methods</h2><ul>{failures}</ul>" if failures else ""}
{f"<h2>Notes</h2><ul>{note_items}</ul>" if note_items else ""}
<h2>Plots</h2>{pictures}</body></html>
"""


def render_report(
    rows: list[ComparisonRow], title: str = "parquant comparison", notes: list[str] | None = None
) -> dict[str, bytes]:
    """Every file of a report, by name: report.md, report.html, the PNG plots, and report.json last."""
    notes = (notes or []) + environment_notes(rows)
    images = plots(rows)
    files: dict[str, bytes] = dict(images)
    files["report.md"] = markdown(rows, title, notes).encode()
    files["report.html"] = html_page(rows, title, notes, images).encode()
    files["report.json"] = (
        json.dumps({"title": title, "notes": notes, "rows": [r.to_dict() for r in rows]}, indent=2) + "\n"
    ).encode()
    return files
