"""Pages: the comparison report (`picochat compare`) and the run's report card (`picochat report`).

A `Page` is a list of blocks (headings, text, tables, images) rendered both as Markdown and as
a self-contained HTML file beside its PNGs. Every stage of the card is optional: a stage whose
files are absent says so and how to produce them.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from picochat.lab.compare import (AXES, TRAINING_EVALS, compare_axis, config_differences, eval_series, group_label,
                                  group_noise, group_runs, run_curve, throughput)
from picochat.lab.plots import bar_plot, line_plot
from picochat.lab.runs import Run, fmt, read_json, summarize
from picochat.lab.verdict import (axis_verdicts, combined_noise, comparability_problems, is_gain,
                                  significance_record, summary_sentence, wall_clock_caveats)
from picochat.checkpoint import latest_checkpoint, read_meta
from picochat.runtime import datasets_dir, tokenizers_dir


class Page:
    def __init__(self, title: str):
        self.title, self.blocks = title, []

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def text(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list]) -> None:
        self.blocks.append(("table", (header, [[str(c) for c in row] for row in rows])))

    def image(self, path: Path, caption: str) -> None:
        self.blocks.append(("img", (Path(path).name, caption)))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, body in self.blocks:
            if kind == "h2":
                out += [f"## {body}", ""]
            elif kind == "p":
                out += [body, ""]
            elif kind == "ul":
                out += [f"- {item}" for item in body] + [""]
            elif kind == "table":
                header, rows = body
                out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                out += ["| " + " | ".join(row) + " |" for row in rows] + [""]
            elif kind == "img":
                out += [f"![{body[1]}]({body[0]})", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(self.title)}</title>",
               "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
               "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}img{max-width:100%}</style></head><body>",
               f"<h1>{e(self.title)}</h1>"]
        for kind, body in self.blocks:
            if kind in ("h2", "p"):
                out.append(f"<{kind}>{e(body)}</{kind}>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in body) + "</ul>")
            elif kind == "table":
                header, rows = body
                out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
                           + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
                           + "</table>")
            elif kind == "img":
                out.append(f"<figure><img src='{e(body[0])}' alt='{e(body[1])}'><figcaption>{e(body[1])}</figcaption></figure>")
        return "\n".join(out + ["</body></html>"]) + "\n"

    def write(self, out_dir: Path, stem: str) -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        md, page = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
        md.write_text(self.markdown())
        page.write_text(self.html())
        return md, page


# ---- the comparison ----------------------------------------------------------------------------

def compare_runs(runs: list[Run], out_dir: Path, plots: bool = True) -> dict:
    """Verdicts, plots and the report for `runs`: each group against the first (the baseline),
    on the range the two of them share on each axis."""
    groups = group_runs(runs)
    labels = [group_label(g) for g in groups]
    noises = [group_noise(g) for g in groups]
    problems = comparability_problems(runs)
    pairs = {i: {axis: compare_axis([groups[0], groups[i]], axis) for axis in AXES} for i in range(1, len(groups))}
    verdicts = []
    for i, comparisons in pairs.items():
        v = axis_verdicts(comparisons, 1, combined_noise([noises[0], noises[i]]), (groups[0], groups[i]))
        verdicts.append({"candidate": labels[i], "baseline": labels[0], "axes": {a: x.describe() for a, x in v.items()},
                         "config_differences": config_differences(groups[0][0].config, groups[i][0].config),
                         "differences": {a: x.difference for a, x in v.items()},
                         "significance": {a: significance_record(x) for a, x in v.items()},
                         "summary": summary_sentence(v), "gain": None if problems else is_gain(v)})
    result = {"groups": labels, "noise": dict(zip(labels, noises)), "not_comparable": problems,
              "caveats": wall_clock_caveats(runs), "verdicts": verdicts,
              "throughput": {label: throughput(g) for label, g in zip(labels, groups)},
              "winner": winner(labels, verdicts, problems)}
    files = comparison_plots(runs, labels, pairs, out_dir) if plots else []
    result["files"] = [str(p) for p in (*files, *comparison_page(result, files).write(out_dir, "compare"))]
    return result


def winner(labels: list[str], verdicts: list[dict], problems: list[str]) -> str:
    if problems:
        return "no winner called: the runs are not comparable (" + "; ".join(problems) + ")"
    gains = [v["candidate"] for v in verdicts if v["gain"]]
    if gains:
        return f"{', '.join(gains)} beat{'s' if len(gains) == 1 else ''} the baseline {labels[0]}: better on some axis, worse on none"
    return f"the baseline {labels[0]} stands: no candidate wins without losing on some axis"


def comparison_plots(runs: list[Run], labels: list[str], pairs: dict, out_dir: Path) -> list[Path]:
    """bpb against each axis for every run, the difference to the baseline on each shared range, tok/s."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for axis, label in AXES.items():
        series = {run.name: (c.x, c.bpb) for run in runs if len((c := run_curve(run, axis)).x)}
        paths.append(line_plot(series, label, "validation bpb", f"validation bpb vs {label}",
                               out_dir / f"bpb_vs_{axis}.png", log_x=axis == "flops"))
        deltas = {labels[i]: (c.grid, c.bpb[1] - c.bpb[0]) for i, comparisons in pairs.items()
                  if len((c := comparisons[axis]).grid) > 1}
        if deltas:
            paths.append(line_plot(deltas, label, "bpb minus baseline (negative: better)",
                                   f"difference to {labels[0]} at common {label}", out_dir / f"delta_vs_{axis}.png",
                                   markers=False, log_x=axis == "flops"))
    paths += training_eval_plots(runs, out_dir)
    speeds = {label: t for label, g in zip(labels, group_runs(runs)) if (t := throughput(g)["tok_per_sec"]) is not None}
    if speeds:
        paths.append(bar_plot(speeds, "tokens per second", "training throughput", out_dir / "tok_per_sec.png"))
    return paths


def training_eval_plots(runs: list[Run], out_dir: Path) -> list[Path]:
    """CORE, ChatCORE and held-out pass@k against steps, one line per run, for those the runs logged."""
    paths = []
    for key, label in TRAINING_EVALS.items():
        series = {run.name: points for run in runs if len((points := eval_series(run, key))[0])}
        if series:
            paths.append(line_plot(series, "step", label, f"{label} during training",
                                   out_dir / f"{key.replace('@', '_at_')}_vs_step.png"))
    return paths


def comparison_page(result: dict, plots: list[Path]) -> Page:
    page = Page("picochat compare: " + " vs ".join(result["groups"]))
    page.heading("Verdict")
    page.text(result["winner"])
    if result["not_comparable"]:
        page.text("Not comparable, so differences below are not evidence (a lower loss can come from scoring other tokens):")
        page.bullets(result["not_comparable"])
    page.bullets([f"caveat: {c}" for c in result["caveats"]])
    for v in result["verdicts"]:
        page.text(f"{v['candidate']} vs {v['baseline']}: {v['summary']}")
        page.bullets(list(v["axes"].values()))
    page.heading("Runs")
    rows = [[label, fmt(t["steps"], "int"), fmt(t["flops"], "sci"), fmt(t["time"], "time"), fmt(t["val_bpb"], "bpb"),
             fmt(result["noise"][label], "bpb"), fmt(t["tok_per_sec"], "sci"), fmt(t["mfu"], "pct"),
             fmt(t["peak_memory"], "sci")] for label, t in result["throughput"].items()]
    page.table(["group", "steps", "FLOPs", "wall-clock", "final val bpb", "noise (spread)", "tok/s", "MFU",
                "peak memory"], rows)
    page.heading("Curves")
    page.text("Differences are taken at the last point every run reaches on the axis, after linear "
              "interpolation onto a common grid; repeats (same config, other seed) are averaged.")
    for path in plots:
        page.image(path, path.stem.replace("_", " "))
    return page


def format_comparison(result: dict) -> str:
    lines = [f"baseline: {result['groups'][0]}"]
    lines += [f"NOT COMPARABLE: {p}" for p in result["not_comparable"]]
    lines += [f"caveat: {c}" for c in result["caveats"]]
    for v in result["verdicts"]:
        lines.append(f"{v['candidate']} vs {v['baseline']}: {v['summary']}")
        if v["config_differences"]:
            lines.append("  config: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in v["config_differences"].items()))
        lines += [f"  {text}" for text in v["axes"].values()]
    for label, t in result["throughput"].items():
        lines.append(f"{label}: {fmt(t['tok_per_sec'], 'sci')} tok/s, MFU {fmt(t['mfu'], 'pct')}, "
                     f"peak memory {fmt(t['peak_memory'], 'sci')}, noise {fmt(result['noise'][label], 'bpb')}")
    lines.append(f"verdict: {result['winner']}")
    return "\n".join(lines)


# ---- the report card ---------------------------------------------------------------------------

def device_hours(summary: dict) -> float | None:
    """Training wall-clock x processes (evaluation time is not in `time`, so this is a floor)."""
    return None if summary["time"] is None else summary["time"] * (summary["world_size"] or 1) / 3600


def device_kind(env: dict) -> str:
    """GPU, CPU or MPS: what an hour of this run was an hour of."""
    kind = str(env.get("device", "")).split(":")[0]
    return {"cuda": "GPU", "cpu": "CPU", "mps": "MPS"}.get(kind, "device")


def report_card(run: Run, out_dir: Path, price_per_hour: float | None = None) -> list[Path]:
    s = summarize(run)
    page = Page(f"picochat report: {run.name}")
    page.text(f"{s['status']}; run directory {run.path}")
    origin = checkpoint_origin(run)
    if origin.get("from_run"):
        page.text(f"{origin.get('stage', 'post')}-trained from {origin['from_run']}")
    data_section(page, run.config.get("dataset") or origin.get("dataset"))
    tokenizer_section(page, run.config.get("tokenizer") or origin.get("tokenizer"))
    plots = training_section(page, run, s, out_dir)
    evals_section(page, run)
    samples_section(page, run.path)
    cost_section(page, s, device_kind(run.env), price_per_hour)
    page.heading("Provenance")
    page.table(["key", "value"], [[k, v] for k, v in run.env.items()] or [["env.json", "absent"]])
    page.heading("Config")
    page.table(["field", "value"], [[k, v] for k, v in run.config.items()] or [["config.json", "absent"]])
    return [*plots, *page.write(out_dir, "report")]


def checkpoint_origin(run: Run) -> dict:
    """What the latest checkpoint records of where the run came from: a post-trained run's config has no
    dataset, its checkpoints carry the base run's dataset and tokenizer."""
    checkpoint = latest_checkpoint(run.path)
    meta = read_meta(checkpoint) if checkpoint else {}
    return {k: meta[k] for k in ("dataset", "tokenizer", "stage", "from_run") if k in meta}


def data_section(page: Page, dataset: str | None) -> None:
    page.heading("Data")
    manifest = read_json(datasets_dir() / dataset / "manifest.json") if dataset else None
    if not manifest:
        page.text(f"dataset {dataset!r}: no manifest found under {datasets_dir()}")
        return
    rows = [[split, fmt(info.get("documents"), "int"), fmt(info.get("characters"), "int"), len(info.get("shards", []))]
            for split, info in manifest.get("splits", {}).items()]
    page.text(f"dataset {dataset}, created {manifest.get('created', '?')}, split rule: {manifest.get('split_rule', '?')}")
    page.table(["split", "documents", "characters", "shards"], rows)


def tokenizer_section(page: Page, tokenizer: str | None) -> None:
    page.heading("Tokenizer")
    meta = read_json(tokenizers_dir() / tokenizer / "meta.json") if tokenizer else None
    if not meta:
        page.text(f"tokenizer {tokenizer!r}: no meta.json found under {tokenizers_dir()}")
        return
    keys = ("vocab_size", "dataset", "documents", "characters", "training_seconds", "created")
    page.table(["key", "value"], [[k, meta[k]] for k in keys if k in meta])


def training_section(page: Page, run: Run, s: dict, out_dir: Path) -> list[Path]:
    page.heading("Training")
    page.table(["steps", "tokens", "FLOPs", "wall-clock", "tok/s", "MFU", "final loss", "final val bpb", "best val bpb"],
               [[fmt(s["steps"], "int"), fmt(s["tokens"], "sci"), fmt(s["flops"], "sci"), fmt(s["time"], "time"),
                 fmt(s["tok_per_sec"], "sci"), fmt(s["mfu"], "pct"), fmt(s["final_loss"], "bpb"),
                 fmt(s["val_bpb"], "bpb"), fmt(s["min_val_bpb"], "bpb")]])
    if not run.metrics:
        page.text("no metrics.jsonl: the run has not logged a step yet")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = np.array([r["step"] for r in run.metrics], dtype=float)
    losses = np.array([r.get("loss", np.nan) for r in run.metrics], dtype=float)
    plots = [line_plot({"train loss": (steps, losses)}, "step", "training loss (nats/token)", "training loss",
                       out_dir / "loss.png", markers=False)]
    for axis, label in AXES.items():
        curve = run_curve(run, axis)
        if len(curve.x):
            plots.append(line_plot({run.name: (curve.x, curve.bpb)}, label, "validation bpb",
                                   f"validation bpb vs {label}", out_dir / f"bpb_vs_{axis}.png", log_x=axis == "flops"))
    plots += training_eval_plots([run], out_dir)
    for path in plots:
        page.image(path, path.stem.replace("_", " "))
    return plots


def core_tasks(core: dict) -> dict[str, dict]:
    """`picochat eval core` writes {"tasks": {label: {accuracy, centered, examples}}}."""
    tasks = core.get("tasks", {})
    if isinstance(tasks, list):  # tolerate a list of {label, ...} records
        return {t.get("label", t.get("task", "?")): t for t in tasks}
    return tasks


def evals_section(page: Page, run: Run) -> None:
    page.heading("Evaluations")
    if run.bpb:
        page.text("bpb.json: " + ", ".join(f"{k} {v}" for k, v in run.bpb.items()))
    if run.core:
        rows = [[label, fmt(t.get("accuracy"), "bpb"), fmt(t.get("centered"), "bpb")]
                for label, t in core_tasks(run.core).items()]
        page.table(["task", "accuracy", "centered"], rows + [["CORE", "", fmt(run.core.get("core"), "bpb")]])
        if run.core.get("missing"):
            page.text("missing from the mean: " + ", ".join(run.core["missing"]))
    else:
        page.text(f"CORE: not evaluated (picochat eval core --run {run.name})")
    chat = read_json(run.path / "chat_eval.json")
    if chat:
        rows = [[task, fmt(t.get("accuracy"), "bpb"), fmt(t.get("centered"), "bpb"), fmt(t.get("total"), "int")]
                for task, t in chat_tasks(chat).items()]
        page.table(["chat eval", "accuracy", "centered", "items"], rows + [["ChatCORE", "", fmt(chat.get("chatcore"), "bpb"), ""]])


def chat_tasks(chat: dict) -> dict[str, dict]:
    """chat_eval.json's tasks ({"tasks": {name: {accuracy, centered, total}}}; early SFT runs wrote {name: accuracy})."""
    return chat.get("tasks") or {k: {"accuracy": v} for k, v in chat.items() if k != "chatcore"}


def samples_section(page: Page, run_path: Path) -> None:
    for name in ("samples.json", "samples.txt"):
        path = run_path / name
        if path.is_file():
            page.heading("Samples")
            text = path.read_text()
            try:
                items = json.loads(text) if name.endswith(".json") else text.splitlines()
            except json.JSONDecodeError:
                items = text.splitlines()
            page.bullets([str(item) for item in (items if isinstance(items, list) else [items])][:20])
            return


def cost_section(page: Page, s: dict, kind: str, price_per_hour: float | None) -> None:
    page.heading("Cost")
    hours = device_hours(s)
    if hours is None:
        page.text("no training time recorded")
        return
    line = (f"{hours:.4f} {kind}-hours ({fmt(s['time'], 'time')} training wall-clock x {s['world_size'] or 1} "
            f"process(es) on {s['device']})")
    if price_per_hour is not None:
        line += f"; at ${price_per_hour:.2f} per {kind}-hour: ${hours * price_per_hour:.2f}"
    page.text(line + ". Evaluation time is not included.")
