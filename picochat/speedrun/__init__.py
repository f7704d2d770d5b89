"""`picochat speedrun`: the whole pipeline in one command, from data to a model you can chat with.

presets.py holds the three recipes (cpu, d12, gpt2), stages.py the stages and their commands,
runner.py the loop that runs them in order and resumes, cli.py the command.
"""
from picochat.speedrun.presets import PRESETS, Preset, UnknownPresetError, get_preset
from picochat.speedrun.runner import StageFailedError, run_speedrun
from picochat.speedrun.stages import STAGE_NAMES, STAGES, Command, Context, Stage

__all__ = ["PRESETS", "Preset", "UnknownPresetError", "get_preset", "StageFailedError", "run_speedrun",
           "STAGE_NAMES", "STAGES", "Command", "Context", "Stage"]
