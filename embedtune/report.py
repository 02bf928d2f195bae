"""The pipeline's final report: ``RUN/report.md`` and a self-contained ``RUN/report.html``.

The Markdown is assembled from what the stages wrote (the evaluation report, the mining report,
the training curve, the manifests) -- no number is typed in here. The HTML is the same Markdown
rendered with markdown-it (already installed with rich) and every image inlined as a data URI,
so the page can be mailed or opened anywhere without its folder.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from .io import atomic_write_text
from .run_folder import STAGE_ARTIFACTS, RunFolder, read_manifest

STAGE_TITLES = {"mine": "Hard-negative mining", "train": "Training", "select": "Selection", "index": "Index", "eval": "Evaluation", "export": "Export"}
_IMG = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#+) ", re.M)


def _embed_markdown(path: Path, prefix: str) -> str:
    """A stage's report.md, headings pushed one level down and image paths made run-relative."""
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8")
    text = _HEADING.sub(lambda m: "#" + m.group(1) + " ", text)
    return _IMG.sub(lambda m: f"![{m.group(1)}]({m.group(2) if '://' in m.group(2) else prefix + '/' + m.group(2)})", text)


def _manifest(run_dir: Path, stage: str) -> dict[str, Any]:
    return read_manifest(RunFolder(run_dir).stage_dir(stage)) or {}


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def build_markdown(run_dir: Path, state: dict[str, Any]) -> str:
    run_dir = Path(run_dir)
    lines = [f"# embedtune run: `{run_dir}`", ""]
    cfg = state.get("config", {})
    model = cfg.get("model", {}).get("name", "?")
    bench = cfg.get("data", {})
    lines += [f"Base model: `{model}`. Data: {json.dumps({k: v for k, v in bench.items() if v not in (None, False)})}.", ""]

    eval_md = _embed_markdown(run_dir / "eval" / "report.md", "eval")
    if eval_md:
        lines += ["## Base vs tuned", "", eval_md, ""]

    train = _manifest(run_dir, "train")
    if train:
        metrics = train.get("metrics", {})
        lines += ["## Training", ""]
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        if shown:
            lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in shown.items()] + [""]
        if (run_dir / "train" / "training_curve.png").is_file():
            lines += ["![training curve: loss and dev nDCG@10 per step](train/training_curve.png)", ""]

    selection = run_dir / "select" / "selection.json"
    if selection.is_file():
        from .selection import render_selection

        lines += render_selection(json.loads(selection.read_text()))

    mine_md = _embed_markdown(run_dir / "mine" / "report.md", "mine")
    if mine_md:
        lines += ["## Mining", "", mine_md, ""]

    lines += ["## Wall time and peak memory per stage", "", "| stage | wall time | peak resident memory | this run |", "|---|---|---|---|"]
    total, peak = 0.0, 0.0
    for stage, rec in state.get("stages", {}).items():
        total += rec.get("seconds") or 0.0
        peak = max(peak, rec.get("peak_rss_mb") or 0.0)
        memory = f"{rec['peak_rss_mb'] / 1024:.2f} GB" if rec.get("peak_rss_mb") else "-"
        lines.append(f"| {STAGE_TITLES.get(stage, stage)} | {_fmt_seconds(rec.get('seconds'))} | {memory} | "
                     f"{'skipped (unchanged)' if rec.get('skipped') else rec.get('status', '')} |")
    lines += [f"| **total** | **{_fmt_seconds(total)}** | **{peak / 1024:.2f} GB** | |", ""]

    lines += ["## Artifacts", ""]
    for stage, what in STAGE_ARTIFACTS.items():
        if RunFolder(run_dir).stage_dir(stage).is_dir():
            lines.append(f"- {STAGE_TITLES.get(stage, stage)}: `{run_dir / stage}` -- {what}")
    lines.append("")
    return "\n".join(lines)


def _inline_images(body: str, base: Path) -> str:
    def repl(m: re.Match) -> str:
        src = html.unescape(m.group(1))
        path = base / src
        if "://" in src or not path.is_file():
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    return re.sub(r'src="([^"]+)"', repl, body)


HTML_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
code {{ background: #f4f4f4; padding: 0 3px; }}
pre {{ background: #f4f4f4; padding: 8px; overflow-x: auto; }}
</style></head>
<body>
{body}
</body></html>
"""


def markdown_to_html(markdown: str, base: Path, title: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return HTML_TEMPLATE.format(title=html.escape(title), body=_inline_images(body, base))


def write_pipeline_report(run_dir: str | Path, state: dict[str, Any]) -> dict[str, str]:
    run_dir = Path(run_dir)
    markdown = build_markdown(run_dir, state)
    atomic_write_text(run_dir / "report.md", markdown)
    atomic_write_text(run_dir / "report.html", markdown_to_html(markdown, run_dir, f"embedtune run {run_dir.name}"))
    return {"markdown": str(run_dir / "report.md"), "html": str(run_dir / "report.html")}
