"""picochat speedrun: presets, the stage runner (skip, fail, resume) and a miniature cpu speedrun."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

from picochat import cli
from picochat.data.pystdlib import build_pystdlib
from picochat.errors import PicochatError
from picochat.speedrun import runner, stages
from picochat.speedrun.presets import PRESETS, UnknownPresetError, get_preset
from picochat.speedrun.runner import StageFailedError, process_argv, run_speedrun
from picochat.speedrun.stages import STAGE_NAMES, Command, Context, Stage, choose_dataset


def test_unknown_preset_names_every_preset():
    with pytest.raises(UnknownPresetError) as e:
        get_preset("d99")
    assert all(name in str(e.value) for name in PRESETS)


def test_cli_unknown_preset_exits_with_a_message(home, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["speedrun", "--preset", "nope"])
    assert e.value.code == 2
    assert "'nope' is not a preset" in capsys.readouterr().err


def test_gpu_preset_refuses_without_gpus(home, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit):
        cli.main(["speedrun", "--preset", "d12"])
    assert "--preset cpu" in capsys.readouterr().err


def test_offline_cpu_falls_back_to_pystdlib_and_gpu_presets_refuse(home):
    name, why = choose_dataset(PRESETS["cpu"], None, probe=lambda: False)
    assert name == "pystdlib" and "no network" in why
    assert choose_dataset(PRESETS["cpu"], "mine", probe=lambda: False)[0] == "mine"
    assert choose_dataset(PRESETS["cpu"], None, probe=lambda: True)[0] == "climbmix"
    with pytest.raises(PicochatError, match="climbmix"):
        choose_dataset(PRESETS["gpt2"], None, probe=lambda: False)


def test_distributed_commands_run_under_torchrun_on_gpu_presets(home):
    command = Command(("eval", "bpb", "--run", "r"), distributed=True)
    gpu = process_argv(command, Context(PRESETS["gpt2"], "r", "climbmix", nproc=8))
    assert gpu[:3] == ["torchrun", "--standalone", "--nproc_per_node=8"]
    assert gpu[gpu.index("--") + 1:] == list(command.args)  # `--` shields --run from torchrun's parser
    cpu = process_argv(command, Context(PRESETS["cpu"], "r", "pystdlib"))
    assert cpu[1:] == ["-m", "picochat", *command.args]


def test_core_runs_on_a_present_bundle_and_is_skipped_without_one(tmp_path):
    ctx = Context(PRESETS["cpu"], "r", "pystdlib", core_bundle=tmp_path)
    assert stages.core_commands(ctx) == [] and str(tmp_path) in stages.core_skip_reason(ctx)
    (tmp_path / "core.yaml").write_text("icl_tasks: []\n")
    args = stages.core_commands(ctx)[0].args
    assert args[:2] == ("eval", "core") and args[args.index("--max-per-task") + 1] == str(PRESETS["cpu"].core_max_per_task)


def test_gpt2_preset_is_the_reference_recipe():
    ctx = Context(PRESETS["gpt2"], "r", "climbmix", nproc=8)
    args = stages.pretrain_commands(ctx)[0].args
    assert args[args.index("--depth") + 1] == "24" and args[args.index("--ratio") + 1] == "8"
    assert "--fp8" in args and args[args.index("--device-batch-size") + 1] == "16"
    assert PRESETS["gpt2"].shards == 170


# ---- the runner, on stages that only write files -----------------------------------------------

def fake_stages(root: Path, names=("a", "b", "c")) -> tuple[Stage, ...]:
    """Stage NAME's one command is `fake NAME`; its output is the file root/NAME."""
    return tuple(Stage(n, lambda ctx, n=n: [Command(("fake", n))], lambda ctx, n=n: [root / n]) for n in names)


class Recorder:
    """An `execute` that records which stages ran, writes their output file, and can fail one of them."""

    def __init__(self, root: Path, fail: str | None = None):
        self.root, self.fail, self.ran = root, fail, []

    def __call__(self, argv: list[str], log: Path) -> tuple[int, str]:
        name = argv[-1]
        self.ran.append(name)
        if name == self.fail:
            return 3, "boom\n"
        (self.root / name).write_text("ok")
        return 0, ""


def test_failed_stage_keeps_finished_ones_and_the_next_run_resumes_there(home, monkeypatch):
    root = home / "outputs"
    root.mkdir(parents=True)
    monkeypatch.setattr(runner, "STAGES", fake_stages(root))
    monkeypatch.setattr(runner, "STAGE_NAMES", ("a", "b", "c"))
    ctx = Context(PRESETS["cpu"], "r", "pystdlib")
    first = Recorder(root, fail="b")
    with pytest.raises(StageFailedError) as e:
        run_speedrun(ctx, execute=first)
    assert "'b'" in str(e.value) and "b.log" in str(e.value) and "resume" in str(e.value)
    assert first.ran == ["a", "b"]
    saved = json.loads((ctx.state_dir / "speedrun.json").read_text())
    assert list(saved["stages"]) == ["a"]
    second = Recorder(root)
    state = run_speedrun(ctx, execute=second)
    assert second.ran == ["b", "c"]  # a is not run again
    assert list(state["stages"]) == ["a", "b", "c"]
    third = Recorder(root)
    run_speedrun(ctx, execute=third)
    assert third.ran == []


def test_marker_without_outputs_reruns_and_from_stage_forces(home, monkeypatch):
    root = home / "outputs"
    root.mkdir(parents=True)
    monkeypatch.setattr(runner, "STAGES", fake_stages(root))
    monkeypatch.setattr(runner, "STAGE_NAMES", ("a", "b", "c"))
    ctx = Context(PRESETS["cpu"], "r", "pystdlib")
    run_speedrun(ctx, execute=Recorder(root))
    (root / "b").unlink()  # the marker says done, the file says otherwise
    again = Recorder(root)
    run_speedrun(ctx, execute=again)
    assert again.ran == ["b"]
    forced = Recorder(root)
    run_speedrun(ctx, from_stage="b", execute=forced)
    assert forced.ran == ["b", "c"]
    with pytest.raises(PicochatError, match="not a stage"):
        run_speedrun(ctx, from_stage="nope", execute=Recorder(root))


def test_a_run_keeps_its_preset(home, monkeypatch):
    root = home / "outputs"
    root.mkdir(parents=True)
    monkeypatch.setattr(runner, "STAGES", fake_stages(root, ("a",)))
    run_speedrun(Context(PRESETS["cpu"], "r", "pystdlib"), execute=Recorder(root))
    with pytest.raises(PicochatError, match="--preset cpu"):
        run_speedrun(Context(PRESETS["d12"], "r", "climbmix"), execute=Recorder(root))


# ---- the real thing, in miniature ----------------------------------------------------------------

MINI = dataclasses.replace(
    PRESETS["cpu"], name="cpu", vocab_size=300, tokenizer_max_chars=300_000,
    depth=1, train_args=("--head-dim", "32", "--aspect-ratio", "32", "--window-pattern", "L",
                         "--max-seq-len", "64", "--device-batch-size", "4", "--total-batch-size", "256",
                         "--num-iterations", "4", "--eval-every", "0", "--eval-tokens", "256",
                         "--sample-every", "0", "--save-every", "2", "--log-every", "1"),
    bpb_tokens=512, core_max_per_task=2,
    sft_args=("--num-iterations", "2", "--val-conversations", "10", "--eval-every", "0", "--log-every", "1"),
    sft_generated_counts=(40, 20, 40), chat_eval_max_problems=2, sample_max_tokens=4)


@pytest.mark.slow
def test_miniature_cpu_speedrun_runs_every_stage_and_resumes_after_a_failure(home, monkeypatch, capsys):
    build_pystdlib(max_files=30)
    monkeypatch.setattr(stages, "SAMPLE_PROMPTS", stages.SAMPLE_PROMPTS[:1])  # one model load, not three
    ctx = Context(MINI, "mini", "pystdlib", core_bundle=home / "no_bundle")

    def fail_at_sft(argv, log):
        if "sft" in argv:
            return 1, "simulated failure\n"
        return runner.run_process(argv, log)

    with pytest.raises(StageFailedError, match="'sft'"):
        run_speedrun(ctx, execute=fail_at_sft)
    finished = json.loads((ctx.state_dir / "speedrun.json").read_text())["stages"]
    assert {"tokenizer", "pretrain", "bpb"} <= set(finished)

    ran = []

    def recording(argv, log):
        ran.append(argv[argv.index("picochat") + 1])
        return runner.run_process(argv, log)

    state = run_speedrun(ctx, execute=recording)
    assert ran[0] == "sft" and "train" not in ran and "tokenizer" not in ran
    assert set(STAGE_NAMES) - {"data", "core"} <= set(state["stages"])  # data: built above, so never run here
    assert "core: skipped: no CORE bundle" in capsys.readouterr().out
    assert json.loads((ctx.run_dir / "bpb.json").read_text())["bpb"] > 0
    assert len(json.loads((ctx.sft_dir / "samples.json").read_text())) == 1
    assert (ctx.sft_dir / "chat_eval.json").is_file()
    assert "Samples" in (ctx.sft_dir / "report" / "report.md").read_text()


def test_a_stage_stopped_by_a_signal_is_reported_as_stopped_with_its_status(home, monkeypatch):
    root = home / "outputs"
    root.mkdir(parents=True)
    monkeypatch.setattr(runner, "STAGES", fake_stages(root))
    monkeypatch.setattr(runner, "STAGE_NAMES", ("a", "b", "c"))

    class Stopped(Recorder):
        def __call__(self, argv, log):
            return (143, "stopped by signal\n") if argv[-1] == "b" else super().__call__(argv, log)
    with pytest.raises(runner.StageStoppedError, match="'b' stopped by a signal.*rerun") as e:
        run_speedrun(Context(PRESETS["cpu"], "r", "pystdlib"), execute=Stopped(root))
    assert e.value.exit_status == 143


@pytest.mark.slow
def test_sigterm_to_the_runner_reaches_the_running_stage(tmp_path):
    import signal
    import threading
    child = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: (print('saved'), sys.exit(143)))\n"
             "print('ready', flush=True)\ntime.sleep(60)\n")
    threading.Timer(2.0, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    status, output = runner.run_process([sys.executable, "-c", child], tmp_path / "log")
    assert status == 143 and "saved" in output
