"""`picochat runs|compare|sweep|fit|report`: the experiment lab's commands."""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from picochat.errors import PicochatError
from picochat.lab.fit import fit_sweep, fitted_constants, isoflop_optima, write_constants
from picochat.lab.ladder import run_ladder
from picochat.lab.plots import power_law_plot
from picochat.lab.report import compare_runs, format_comparison, report_card
from picochat.lab.runs import (describe_run, format_run_details, format_run_list, format_table, list_runs, load_run,
                               read_json, summarize)
from picochat.lab.sweep import load_spec, read_results, resolve_sweep_dir, results_rows, run_sweep
from picochat.runtime import runs_dir, tokenizers_dir
from picochat.scaling import ScalingConstants, reference_tokens


def register(subparsers) -> None:
    runs = subparsers.add_parser("runs", help="list training runs or show one (config, env, metrics, evals)",
                                 description="Summarise the runs under $PICOCHAT_HOME/runs.")
    verbs = runs.add_subparsers(dest="runs_command", metavar="VERB", required=True)
    listing = verbs.add_parser("list", help="one line per run: depth, steps, tokens, FLOPs, time, val bpb, CORE, MFU")
    listing.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    listing.set_defaults(func=cmd_runs_list)
    show = verbs.add_parser("show", help="everything known about one run")
    show.add_argument("name", help="run name (under $PICOCHAT_HOME/runs) or run directory")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(func=cmd_runs_show)

    compare = subparsers.add_parser(
        "compare", help="compare runs on val bpb vs steps, FLOPs and wall-clock, with a verdict per axis",
        description="Put runs side by side on the three axes (steps, FLOPs, wall-clock: a gain must show on all three), at common points, with throughput, MFU and "
                    "memory. Repeats (same config, other seed) form a group whose spread is the noise. The first "
                    "run's group is the baseline. Refuses to call a winner when the runs are not comparable.")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="two or more run names or directories")
    compare.add_argument("--out", default=None, metavar="DIR", help="where to write plots and the report "
                         "(default: $PICOCHAT_HOME/runs/compare-<names>)")
    compare.add_argument("--json", action="store_true", help="print the result as JSON")
    compare.set_defaults(func=cmd_compare)

    sweep = subparsers.add_parser(
        "sweep", help="run a grid, list, isoFLOP set or ladder of training runs from a YAML spec (resumable)",
        description="Spec: base: {fields}, then grid: {field: [values]}, runs: [{fields}], isoflop: {budgets: [FLOPs], "
                    "depths: [3+ depths]} or ladder: {rungs, baseline, candidates, promote_if}; optional name:, nproc:. "
                    "Rerunning skips finished runs.")
    sweep.add_argument("spec", help="the sweep's YAML file")
    sweep.add_argument("--trainer-cmd", default=None, help=argparse.SUPPRESS)  # tests: a fake trainer
    sweep.set_defaults(func=cmd_sweep)

    fit = subparsers.add_parser(
        "fit", help="fit scaling laws (batch, weight decay, loss, tokens:params) from a sweep's results",
        description="Power laws by log-log least squares with 95%% intervals; plots beside the sweep's results.")
    fit.add_argument("sweep", help="sweep name (under $PICOCHAT_HOME/sweeps) or directory")
    fit.add_argument("--write-constants", default=None, metavar="FILE",
                     help="write the fitted constants as JSON for `picochat plan --constants FILE`")
    fit.add_argument("--json", action="store_true", help="print the fits as JSON")
    fit.set_defaults(func=cmd_fit)

    report = subparsers.add_parser(
        "report", help="one Markdown/HTML report card for a run: data, tokenizer, curves, evals, cost",
        description="Gather a run's stages into report.md and report.html with plots (missing stages are noted).")
    report.add_argument("run", help="run name or directory")
    report.add_argument("--out", default=None, metavar="DIR", help="output directory (default: RUN/report)")
    report.add_argument("--price-per-hour", type=float, default=None, metavar="USD", help="price of one GPU-hour")
    report.set_defaults(func=cmd_report)


def cmd_runs_list(args: argparse.Namespace) -> int:
    summaries = [summarize(run) for run in list_runs()]
    if args.json:
        print(json.dumps(summaries, indent=2))
    elif not summaries:
        print(f"no runs under {runs_dir()}; start one with `picochat train`")
    else:
        print(format_run_list(summaries))
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    details = describe_run(load_run(args.name))
    print(json.dumps(details, indent=2) if args.json else format_run_details(details))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if len(args.runs) < 2:
        raise PicochatError("compare needs at least two runs: picochat compare RUN_A RUN_B [...]")
    runs = [load_run(name) for name in args.runs]
    out = Path(args.out) if args.out else runs_dir() / ("compare-" + "-".join(r.name for r in runs))[:200]
    result = compare_runs(runs, out)
    print(json.dumps(result, indent=2) if args.json else f"{format_comparison(result)}\nwrote {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    trainer = shlex.split(args.trainer_cmd) if args.trainer_cmd else None
    if "ladder" in spec:
        result = run_ladder(spec, trainer)
        print((Path(result["dir"]) / "ladder.md").read_text(), end="")
        print(f"wrote {result['dir']}/ladder.md, results.md and results.csv")
        return 0
    sweep_dir = run_sweep(spec, trainer)
    header, rows = results_rows(read_results(sweep_dir))
    print(format_table(header, rows))
    print(f"wrote {sweep_dir / 'results.md'} and {sweep_dir / 'results.csv'}")
    return 0


def sweep_vocab_size(rows: list[dict]) -> int | None:
    for row in rows:
        meta = read_json(tokenizers_dir() / str(row.get("config", {}).get("tokenizer")) / "meta.json")
        if meta and meta.get("vocab_size"):
            return int(meta["vocab_size"])
    return None


def cmd_fit(args: argparse.Namespace) -> int:
    sweep_dir = resolve_sweep_dir(args.sweep)
    rows = read_results(sweep_dir)
    fits = fit_sweep(rows)
    out = sweep_dir / "fits"
    out.mkdir(exist_ok=True)
    for f in fits:
        if f.law:
            power_law_plot(f.x, f.y, f.law.coefficient, f.law.exponent, f.xlabel, f.ylabel,
                           f.name.replace("_", " "), out / f"{f.name}.png",
                           "compute frontier" if f.name == "loss_vs_compute" else "sweep optima")
    vocab = sweep_vocab_size(rows)
    constants = fitted_constants(fits, reference_tokens(vocab, ScalingConstants()) if vocab else None)
    optima, isoflop_notes = isoflop_optima(rows)
    isoflop = [o.to_dict() for o in optima]
    record = {"fits": [f.to_dict() for f in fits], "isoflop": isoflop, "constants": constants}
    (out / "fits.json").write_text(json.dumps(record, indent=2) + "\n")
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        for f in fits:
            if f.law:
                low, high = f.law.ci
                interval = f"95% CI {low:.4f} .. {high:.4f}" if f.law.n > 2 else "no interval from 2 points"
                print(f"{f.name}: {f.ylabel} = {f.law.coefficient:.4g} x ({f.xlabel})^{f.law.exponent:.4f} "
                      f"[{interval}], n={f.law.n}, r2={f.law.r2:.3f}")
            else:
                print(f"{f.name}: {f.note}")
        for o in isoflop:
            print(f"isoFLOP {o['budget']:.3g} FLOPs: optimal depth ≈ {o['depth']:.1f}, {o['params']:.3g} params, "
                  f"{o['tokens']:.3g} tokens, tokens:params {o['ratio']:.1f}, bpb {o['bpb']:.4f} (depths {o['depths']})")
        for note in isoflop_notes:
            print(f"isoFLOP {note}")
        print(f"constants: {json.dumps(constants)}\nwrote plots and fits.json in {out}")
    if args.write_constants:
        print(f"wrote {write_constants(constants, Path(args.write_constants))} (use: picochat plan --constants FILE)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    run = load_run(args.run)
    out = Path(args.out) if args.out else run.path / "report"
    files = report_card(run, out, args.price_per_hour)
    print(f"wrote {', '.join(str(f) for f in files if f.suffix != '.png')} and {sum(f.suffix == '.png' for f in files)} plots")
    return 0
