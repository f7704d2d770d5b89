"""Run the stages in order, skip the finished ones, and remember progress in `RUN/speedrun/speedrun.json`.

Each stage's commands run as subprocesses (`python -m picochat ...`, or `torchrun ... -m picochat
-- ...` for the distributed ones on GPU presets) rather than in this process: the GPU presets need
torchrun anyway, a crash (or an OOM) in one stage cannot take the bookkeeping down with it, every
stage gets a plain log file, and what runs is exactly what a person could type.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from picochat.errors import PicochatError
from picochat.runtime import print0
from picochat.speedrun.stages import STAGE_NAMES, STAGES, Command, Context, Stage, quote

STATE_FILE = "speedrun.json"


class StageFailedError(PicochatError):
    """A stage's command exited with an error; the stages before it stay finished."""


class StageStoppedError(PicochatError):
    """A signal stopped a stage (which saved and said so); the CLI exits with the stage's own status."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def stopped_by_signal(status: int) -> bool:
    """picochat exits 128 + the signal when one stops it (130 Ctrl-C, 143 SIGTERM); Popen reports a child
    killed by a signal as minus the signal."""
    return status < 0 or status in (128 + signal.SIGINT, 128 + signal.SIGTERM)


def state_path(ctx: Context) -> Path:
    return ctx.state_dir / STATE_FILE


def log_path(ctx: Context, stage: Stage) -> Path:
    return ctx.state_dir / "logs" / f"{stage.name}.log"


def load_state(ctx: Context) -> dict:
    path = state_path(ctx)
    if not path.is_file():
        return {"preset": ctx.preset.name, "run": ctx.run, "stages": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PicochatError(f"{path} is not valid JSON ({e}); delete it to re-check every stage's outputs") from e


def save_state(ctx: Context, state: dict) -> None:
    path = state_path(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def is_done(stage: Stage, ctx: Context, state: dict) -> bool:
    """Its outputs exist, and (unless they suffice) this speedrun recorded that the stage finished."""
    outputs = stage.outputs(ctx)
    if not outputs or not all(p.exists() for p in outputs):
        return False
    return stage.outputs_suffice or stage.name in state["stages"]


def process_argv(command: Command, ctx: Context) -> list[str]:
    if command.distributed and ctx.preset.gpus > 0:
        # `--` keeps torchrun's own parser off picochat's flags (it reads --run as its --run-path)
        return ["torchrun", "--standalone", f"--nproc_per_node={ctx.nproc}", "-m", "picochat", "--", *command.args]
    return [sys.executable, "-m", "picochat", *command.args]


def display_argv(argv: list[str]) -> str:
    shown = ["python" if argv[0] == sys.executable else argv[0], *argv[1:]]
    return " ".join(quote(a) for a in shown)


def run_process(argv: list[str], log: Path) -> tuple[int, str]:
    """Run argv, copying its output line by line to the console and to `log`; (exit status, output)."""
    lines = []
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(argv)}\n")
        # its own session: a terminal's Ctrl-C reaches the stage once, through the forwarding below, not twice
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   encoding="utf-8", errors="replace", bufsize=1, env=os.environ.copy(),
                                   start_new_session=True)
        with forwarded_signals(process):
            for line in process.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                f.write(line)
                lines.append(line)
            return process.wait(), "".join(lines)


class forwarded_signals:
    """While a stage runs, SIGINT/SIGTERM to the runner go to the stage, which saves and exits 130/143."""

    def __init__(self, process: subprocess.Popen):
        self.process, self.previous = process, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, lambda signum, _: self.process.send_signal(signum))
                             for sig in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def run_stage(stage: Stage, ctx: Context, commands: list[Command], number: str,
              execute: Callable[[list[str], Path], tuple[int, str]]) -> list[str]:
    log = log_path(ctx, stage)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    outputs = []
    for command in commands:
        print0(f"{number} {stage.name}: {display_argv(process_argv(command, ctx))}  (log: {log})")
        status, output = execute(process_argv(command, ctx), log)
        if stopped_by_signal(status):
            raise StageStoppedError(f"stage {stage.name!r} stopped by a signal (exit status {status}) after saving; "
                                    f"rerun the same `picochat speedrun` command to continue it", exit_status(status))
        if status != 0:
            raise StageFailedError(
                f"stage {stage.name!r} failed (exit status {status}) running `{command.display()}`; its log is "
                f"{log}. The finished stages are kept: fix the cause and rerun the same `picochat speedrun` "
                f"command to resume from {stage.name!r}")
        outputs.append(output)
    return outputs


def exit_status(status: int) -> int:
    return 128 - status if status < 0 else status


def stages_from(from_stage: str | None) -> set[str]:
    """The stages --from-stage forces to run again (that one and every later one)."""
    if from_stage is None:
        return set()
    if from_stage not in STAGE_NAMES:
        raise PicochatError(f"--from-stage {from_stage!r} is not a stage; the stages are {', '.join(STAGE_NAMES)}")
    return set(STAGE_NAMES[STAGE_NAMES.index(from_stage):])


def run_speedrun(ctx: Context, from_stage: str | None = None, dry_run: bool = False,
                 execute: Callable[[list[str], Path], tuple[int, str]] = run_process) -> dict:
    """Every stage in order; returns the state ({"stages": {name: {"seconds", "outputs", ...}}})."""
    state = load_state(ctx)
    if state.get("preset") != ctx.preset.name:
        raise PicochatError(f"run {ctx.run!r} was started with --preset {state.get('preset')}; continue it with "
                            f"that preset, or start another with --run NEW")
    state["dataset"] = ctx.dataset
    forced = stages_from(from_stage)
    for name in forced:
        state["stages"].pop(name, None)
    for index, stage in enumerate(STAGES, start=1):
        number = f"[{index}/{len(STAGES)}]"
        if stage.name not in forced and is_done(stage, ctx, state):
            print0(f"{number} {stage.name}: done, skipped ({', '.join(str(p) for p in stage.outputs(ctx))})")
            continue
        commands = stage.commands(ctx)
        if not commands:
            print0(f"{number} {stage.name}: skipped: {stage.skip_reason(ctx) if stage.skip_reason else 'nothing to do'}")
            continue
        if dry_run:
            for command in commands:
                print0(f"{number} {stage.name}: would run {display_argv(process_argv(command, ctx))}")
            continue
        started = time.monotonic()
        outputs = run_stage(stage, ctx, commands, number, execute)
        if stage.finish is not None:
            stage.finish(ctx, outputs)
        produced = stage.outputs(ctx)
        if not produced or not all(p.exists() for p in produced):
            raise StageFailedError(f"stage {stage.name!r} stopped before leaving its outputs "
                                   f"({', '.join(map(str, produced)) or 'a final checkpoint'}); see its log "
                                   f"{log_path(ctx, stage)}; rerun the same command to continue it")
        state["stages"][stage.name] = {"seconds": round(time.monotonic() - started, 1),
                                       "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                       "outputs": [str(p) for p in produced]}
        save_state(ctx, state)
        print0(f"{number} {stage.name}: finished in {state['stages'][stage.name]['seconds']:.1f}s")
    return state


def format_summary(state: dict) -> str:
    lines = [f"{'stage':<15} {'seconds':>9}"]
    total = 0.0
    for name in STAGE_NAMES:
        info = state["stages"].get(name)
        seconds = info["seconds"] if info else None
        total += seconds or 0.0
        lines.append(f"{name:<15} {'-' if seconds is None else f'{seconds:.1f}':>9}")
    lines.append(f"{'total':<15} {total:>9.1f}")
    return "\n".join(lines)
