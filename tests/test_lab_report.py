"""The report card gathers whatever stages a run has into Markdown and HTML with plots."""
from __future__ import annotations

import json

import pytest

from picochat.cli import main
from picochat.lab.report import Page, device_hours
from test_lab_runs import make_run


def test_page_renders_the_same_blocks_in_markdown_and_html(tmp_path):
    page = Page("t")
    page.heading("Section")
    page.table(["a", "b"], [[1, "<x>"]])
    page.image(tmp_path / "p.png", "a plot")
    md, html = page.write(tmp_path, "page")
    assert "| a | b |\n|---|---|\n| 1 | <x> |" in md.read_text() and "![a plot](p.png)" in md.read_text()
    assert "<td>&lt;x&gt;</td>" in html.read_text() and "<img src='p.png'" in html.read_text()


def test_device_hours_count_every_process():
    assert device_hours({"time": 1800.0, "world_size": 8}) == pytest.approx(4.0)
    assert device_hours({"time": None, "world_size": 1}) is None


@pytest.mark.slow
def test_report_card_with_every_stage(home, capsys):
    path = make_run("full", seconds_per_step=36.0, env={"world_size": 2, "device": "cuda:0", "device_name": "H100"})
    (path / "core.json").write_text(json.dumps({"core": 0.05, "missing": ["squad"],
                                                "tasks": {"hellaswag": {"accuracy": 0.3, "centered": 0.07, "examples": 10}}}))
    (path / "chat_eval.json").write_text(json.dumps({"gsm8k": 0.02}))
    (path / "samples.json").write_text(json.dumps(["The capital of France is Paris"]))
    (home / "tokenizers" / "toy-tok").mkdir(parents=True)
    (home / "tokenizers" / "toy-tok" / "meta.json").write_text(json.dumps({"vocab_size": 300, "dataset": "toy"}))
    (home / "datasets" / "toy").mkdir(parents=True)
    (home / "datasets" / "toy" / "manifest.json").write_text(json.dumps(
        {"splits": {"train": {"documents": 90, "characters": 9000, "shards": [{}]}}, "created": "today"}))
    assert main(["report", "full", "--price-per-hour", "2.0"]) == 0
    md = (path / "report" / "report.md").read_text()
    for expected in ("| hellaswag | 0.3000 | 0.0700 |", "missing from the mean: squad", "gsm8k", "Paris",
                     "| train | 90 | 9,000 | 1 |", "| vocab_size | 300 |", "0.2000 GPU-hours", "$0.40",
                     "![loss](loss.png)", "![bpb vs time](bpb_vs_time.png)"):
        assert expected in md, expected
    assert (path / "report" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (path / "report" / "report.html").is_file()


def test_report_card_tolerates_missing_stages(home):
    path = home / "runs" / "bare"
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"dataset": "gone", "tokenizer": "gone"}))
    assert main(["report", "bare"]) == 0
    md = (path / "report" / "report.md").read_text()
    assert "no manifest found" in md and "no meta.json found" in md and "CORE: not evaluated" in md
    assert "no metrics.jsonl" in md and "no training time recorded" in md


@pytest.mark.slow
def test_a_post_trained_runs_card_shows_its_base_data_chat_evals_and_cpu_hours(home):
    from picochat.checkpoint import save_checkpoint
    path = make_run("chat", config={"dataset": None, "tokenizer": None, "from_run": "base"},
                    extra={"chatcore": 0.1})
    save_checkpoint(path, 10, {}, {}, {"dataset": "toy", "tokenizer": "toy-tok", "stage": "sft",
                                        "from_run": "runs/base/checkpoints/step_000100"})
    (path / "chat_eval.json").write_text(json.dumps({"tasks": {"gsm8k": {"accuracy": 0.25, "centered": 0.25,
                                                                         "total": 8}}, "chatcore": 0.25}))
    assert main(["report", "chat"]) == 0
    md = (path / "report" / "report.md").read_text()
    for expected in ("dataset 'toy': no manifest found", "tokenizer 'toy-tok': no meta.json found",
                     "sft-trained from runs/base", "| gsm8k | 0.2500 | 0.2500 | 8 |", "| ChatCORE |  | 0.2500 |  |",
                     "CPU-hours", "![chatcore vs step](chatcore_vs_step.png)"):
        assert expected in md, expected
    assert "GPU-hours" not in md and "None" not in md.split("## Provenance")[0]
