"""A table's aggregate (aggregate.py) as DIR/<table>.md, DIR/<table>.json and DIR/<table>.png.

    paths = write(data, "runs/ablate")     # {"md": ..., "json": ..., "png": ...}
    data = load("runs/ablate/mm_dpo_beta.json")
    fig = figure(data)                     # a matplotlib Figure (no pyplot state); png(data): its PNG bytes

The markdown has one row per (cell, metric): our mean +- std over seeds, the per-seed values and the
paper's figure with its source beside it; then every comparison with the paper's direction, whether our
means agree and in how many seeds it holds; then the cells' overrides and the table's notes.
"""

import io
import json

from mm_rlhf_jax import storage


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _paper(p: dict | None) -> str:
    return "-" if p is None else f"{p['value']:g} ({p['source']})"


def _mean_std(st: dict) -> str:
    return "-" if st["mean"] is None else f"{_f(st['mean'])} ± {_f(st['std'])} (n={st['n']})"


def _seeds(st: dict) -> str:
    return ", ".join(f"s{s}: {_f(v)}" for s, v in st["values"].items()) or "-"


def _agrees(row: dict) -> str:
    return {True: "yes", False: "**no**", None: "-"}[row["agrees"]]


def markdown(data: dict) -> str:
    run = data.get("run", {})
    lines = [f"# {data['title']}", "",
             f"Table `{data['table']}`; preset `{run.get('config', '?')}`; seeds {run.get('seeds', '?')}"
             + (f"; extra flags `{' '.join(run['extra'])}`" if run.get("extra") else "") + ".",
             "The paper's figures are on its own models and benchmarks: compare directions, not sizes.", "",
             "| cell | metric | ours: mean ± std | per seed | paper |", "|---|---|---|---|---|"]
    for label, cell in data["cells"].items():
        for m, st in cell["metrics"].items():
            lines.append(f"| {label} | {m} | {_mean_std(st)} | {_seeds(st)} | {_paper(st['paper'])} |")
    lines += ["", "## Comparisons", "",
              "| paper says | source | paper's figures | our means | ours agree | seeds where it holds |",
              "|---|---|---|---|---|---|"]
    for r in data["comparisons"]:
        paper = "-" if r["paper_a"] is None or r["paper_b"] is None else f"{r['paper_a']:g} vs {r['paper_b']:g}"
        lines.append(f"| `{r['a']} {r['op']} {r['b']}` | {r['source']} | {paper} | {_f(r['mean_a'])} vs "
                     f"{_f(r['mean_b'])} | {_agrees(r)} | {r['seeds_agree']} of {r['seeds_compared']} |")
    lines += ["", "## Cells", "", "| cell | overrides | note |", "|---|---|---|"]
    for label, cell in data["cells"].items():
        overrides = " ".join(f"`{k}={v}`" for k, v in cell["overrides"].items()) or "(the preset)"
        lines.append(f"| {label} | {overrides} | {cell['note']} |")
    if data["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in data["notes"]]
    return "\n".join(lines) + "\n"


def figure(data: dict):
    """One panel per metric: per cell the mean (bar), ± std (error bar) and each seed's value (dots)."""
    from matplotlib.figure import Figure

    metrics = data["metrics"]
    labels = list(data["cells"])
    fig = Figure(figsize=(max(4.0, 1.1 * len(labels)) * min(len(metrics), 2), 3.2 * ((len(metrics) + 1) // 2)))
    axes = fig.subplots((len(metrics) + 1) // 2, min(len(metrics), 2), squeeze=False).ravel()
    for ax, m in zip(axes, metrics):
        stats = [data["cells"][c]["metrics"][m] for c in labels]
        xs = range(len(labels))
        ax.bar(xs, [s["mean"] or 0.0 for s in stats], yerr=[s["std"] or 0.0 for s in stats], capsize=4,
               color="#9ecae1", edgecolor="#3182bd")
        for x, s in zip(xs, stats):
            vals = list(s["values"].values())
            ax.plot([x] * len(vals), vals, "o", color="#08519c", markersize=4)
        ax.set_xticks(list(xs), labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
        ax.set_title(m, fontsize=9)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(f"{data['table']}: mean ± std over seeds (dots: seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def png(data: dict) -> bytes:
    """figure(data) drawn by the Agg canvas (no display needed; IPython.display.Image(png(data)) shows it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figure(data)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write(data: dict, root: str) -> dict[str, str]:
    """DIR/<table>.{md,json,png}; returns their paths."""
    storage.makedirs(root)
    paths = {ext: storage.join(root, f"{data['table']}.{ext}") for ext in ("md", "json", "png")}
    storage.write_atomic(paths["md"], markdown(data))
    storage.write_atomic(paths["json"], json.dumps(data, indent=1))
    storage.write_atomic(paths["png"], png(data))
    return paths


def load(path: str) -> dict:
    """A DIR/<table>.json written by write()."""
    return json.loads(storage.read_text(path))
