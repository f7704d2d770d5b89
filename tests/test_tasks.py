"""Chat tasks: loading the real formats, rendering, the scorers, the HumanEval sandbox, downloads."""
import gzip
import io
import json
import re
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from picochat.tasks import TASK_NAMES, TaskDataError, get_task, gsm8k_conversation, prompt_conversation
from picochat.tasks.download import DownloadError, download_with_retry, ensure_task_data
from picochat.tasks.humaneval import extract_code, humaneval_program
from picochat.tasks.humaneval_sandbox import run_program

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared eval data is absent ({SHARED})")


def user_text(item):
    return item["messages"][0]["content"]


@needs_shared
@pytest.mark.parametrize("name, split, count", [("arc-easy", "test", 2376), ("arc-challenge", "test", 1172),
                                                ("arc-easy", "train", 2251), ("mmlu", "test", 14079),
                                                ("mmlu", "dev", 285), ("gsm8k", "train", 7473),
                                                ("gsm8k", "test", 1319), ("humaneval", "test", 164)])
def test_tasks_load_the_shared_data_with_the_published_counts(name, split, count):
    task = get_task(name, SHARED)
    items = task.load(split)
    assert len(items) == count
    roles = [m["role"] for m in items[0]["messages"]]
    assert roles == (["user", "assistant"] if split == "train" else ["user"])
    for item in items:
        if task.kind == "categorical":
            assert item["answer"] in item["letters"] and set(item["letters"]) <= set(task.letters)


@needs_shared
def test_mmlu_covers_57_subjects_and_gsm8k_answers_are_numbers():
    assert len({item["subject"] for item in get_task("mmlu", SHARED).load("test")}) == 57
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", item["answer"]) for item in get_task("gsm8k", SHARED).load("test"))


def test_spelling_has_256_deterministic_items_of_both_kinds():
    task = get_task("spelling")
    items = task.load()
    assert len(items) == 256 and items == task.load()
    assert {item["question"] for item in items} == {"spell", "count"}
    assert all(len(item["messages"]) == 1 for item in items)
    for item in task.load("train")[:200]:
        reply = item["messages"][1]["content"]
        if item["question"] == "count":
            python = next(part["text"] for part in reply if part["type"] == "python")
            word, letter = python.split("'")[1], python.split("'")[3]
            assert item["answer"] == str(word.count(letter)) and f"{','.join(word)}" in reply[0]["text"]
            assert task.score(item, "".join(part["text"] for part in reply))
        else:
            assert task.score(item, reply)


def write_arc(path: Path, rows) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "ARC-Easy-Test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_arc_item_renders_the_letter_after_each_choice_and_relabels_numbers(tmp_path):
    row = {"id": "q1", "answerKey": "3", "question": {"stem": "Which is a gas?", "choices": [
        {"text": "ice", "label": "1"}, {"text": "water", "label": "2"}, {"text": "steam", "label": "3"}]}}
    write_arc(tmp_path / "arc", [row])
    [item] = get_task("arc-easy", tmp_path).load("test")
    assert user_text(item) == ("Multiple Choice question: Which is a gas?\n- ice=A\n- water=B\n- steam=C\n\n"
                               "Respond only with the letter of the correct answer.")
    assert item["answer"] == "C" and item["letters"] == ("A", "B", "C")


def test_mmlu_item_renders_from_csv(tmp_path):
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    (tmp_path / "mmlu" / "test" / "anatomy_test.csv").write_text('"What is 2, plus 2?",3,4,5,6,B\n')
    [item] = get_task("mmlu", tmp_path).load("test")
    assert user_text(item) == ("Multiple Choice question: What is 2, plus 2?\n- 3=A\n- 4=B\n- 5=C\n- 6=D\n\n"
                               "Respond only with the letter of the correct answer.")
    assert item["answer"] == "B" and item["subject"] == "anatomy"


def test_malformed_files_are_named_with_their_line(tmp_path):
    good = {"id": "q", "answerKey": "A", "question": {"stem": "s", "choices": [{"text": "t", "label": "A"}]}}
    path = write_arc(tmp_path / "arc", [good]) / "ARC-Easy-Test.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(TaskDataError, match=r"ARC-Easy-Test\.jsonl, line 2: not valid JSON"):
        get_task("arc-easy", tmp_path).load()
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    (tmp_path / "mmlu" / "test" / "x_test.csv").write_text("q,a,b,c,d,A\nq,a,b,c,d,Z\n")
    with pytest.raises(TaskDataError, match=r"x_test\.csv, line 2: the answer 'Z'"):
        get_task("mmlu", tmp_path).load()
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(TaskDataError, match=r"test\.jsonl, line 1: no field 'answer'"):
        get_task("gsm8k", tmp_path).load()


def test_unknown_task_and_missing_data_say_what_to_do(tmp_path):
    with pytest.raises(TaskDataError, match="unknown task 'arc'.*arc-easy, arc-challenge, mmlu, gsm8k"):
        get_task("arc")
    with pytest.raises(TaskDataError, match=r"gsm8k/test\.jsonl is missing.*--task gsm8k --download"):
        get_task("gsm8k", tmp_path).load()
    with pytest.raises(TaskDataError, match="no split 'val'.*train, test"):
        get_task("gsm8k", tmp_path).load("val")


def test_gsm8k_tool_calls_follow_the_annotations():
    answer = "She sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72.\n#### 72"
    assert gsm8k_conversation("How many?", answer)["messages"][1]["content"] == [
        {"type": "text", "text": "She sold 48/2 = "}, {"type": "python", "text": "48/2"},
        {"type": "python_output", "text": "24"}, {"type": "text", "text": "24 clips.\nIn all 48+24 = "},
        {"type": "python", "text": "48+24"}, {"type": "python_output", "text": "72"},
        {"type": "text", "text": "72.\n#### 72"}]


def unrendered(parts) -> str:
    """The inverse of the tool-call rendering: <<expr=result>> put back."""
    text, i = "", 0
    while i < len(parts):
        if parts[i]["type"] == "python":
            text += f"<<{parts[i]['text']}={parts[i + 1]['text']}>>"
            i += 2
        else:
            text += parts[i]["text"]
            i += 1
    return text


@needs_shared
def test_gsm8k_rendering_keeps_every_annotation_exactly():
    rows = [json.loads(line) for line in (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines()]
    for row, item in zip(rows, get_task("gsm8k", SHARED).load("train")):
        parts = item["messages"][1]["content"]
        assert unrendered(parts) == row["answer"]
        assert sum(p["type"] == "python" for p in parts) == row["answer"].count("<<")


def test_scorers_on_hand_written_completions():
    gsm8k = get_task("gsm8k")
    item = {"answer": "1234"}
    assert gsm8k.score(item, "First 1,000 then 234 more, so 1,234 in all.")
    assert gsm8k.score(item, "#### 1234.0")
    assert not gsm8k.score(item, "1234 is wrong, it is 1235")
    assert not gsm8k.score(item, "no number at all")
    arc = get_task("arc-easy")
    assert arc.score({"answer": "B"}, " B\n") and not arc.score({"answer": "B"}, "A")
    spelling = get_task("spelling")
    spell = {"question": "spell", "answer": "c,a,t"}
    assert spelling.score(spell, "cat:c,a,t") and spelling.score(spell, "c, a, t")
    assert not spelling.score(spell, "cat:c,a,t,s") and not spelling.score(spell, "xc,a,t")
    assert spelling.score({"question": "count", "answer": "3"}, "s,t,r,a,w,b,e,r,r,y [python: x] [= 3] so 3")


def humaneval_item(code="def add(a, b):\n    return a + b\n"):
    return {"prompt": 'import math\n\n\ndef add(a, b):\n    """Add two numbers."""\n', "entry_point": "add",
            "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"}


def test_code_is_taken_from_a_python_block_or_raw():
    assert extract_code("Here:\n```python\nx = 1\n```\nDone") == "x = 1\n"
    assert extract_code("    return a + b\n") == "    return a + b\n"
    item = humaneval_item()
    assert humaneval_program(item, "    return a + b\n").startswith(item["prompt"] + "    return a + b")
    assert humaneval_program(item, "```python\ndef add(a, b):\n    return b + a\n```").startswith("import math\n\n")


@needs_shared
def test_canonical_solutions_pass_and_wrong_ones_fail():
    task = get_task("humaneval", SHARED)
    rows = [json.loads(line) for line in gzip.open(SHARED / "humaneval" / "HumanEval.jsonl.gz", "rt")][:3]
    items = task.load()[:3]
    for row, item in zip(rows, items):
        assert task.score(item, row["canonical_solution"])  # the body, continuing the prompt
        fenced = f"Sure:\n```python\n{row['prompt']}{row['canonical_solution']}```"
        assert task.score(item, fenced)
    assert not task.score(items[0], "    return None\n")


def test_sandbox_stops_a_loop_limits_memory_and_disables_os_functions():
    started = time.monotonic()
    result = run_program("while True:\n    pass\n", timeout=1.0)
    assert result == result.__class__(False, "timeout") and time.monotonic() - started < 3
    assert "MemoryError" in run_program("x = bytearray(400 * 1024**2)\n").reason  # over the 256 MB limit
    assert run_program("x = bytearray(50 * 1024**2)\n").passed
    assert run_program("import os, shutil\nassert os.system is None and shutil.rmtree is None\n").passed
    assert "ZeroDivisionError" in run_program("1 / 0\n").reason


def test_prompt_conversation_drops_the_reply():
    conversation = gsm8k_conversation("q?", "a <<1+1=2>>2\n#### 2")
    assert prompt_conversation(conversation)["messages"] == [{"role": "user", "content": "q?"}]


# downloads, offline: a fake fetcher writes what the URL would give


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buffer.getvalue()


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def fetcher_of(contents: dict[str, bytes], calls: list):
    def fetch(url, destination):
        calls.append(url)
        destination.write_bytes(contents[url.rsplit("/", 1)[1]])
    return fetch


@needs_shared
def test_arc_download_unpacks_the_published_layout_and_checks_pins(tmp_path):
    members = {f"ARC-V1-Feb2018-2/{p.stem.rsplit('-', 1)[0]}/{p.name}": p.read_bytes()
               for p in (SHARED / "arc").glob("*.jsonl")}
    members["ARC-V1-Feb2018-2/README.txt"] = b"readme"
    calls = []
    folder = ensure_task_data("arc", tmp_path, fetcher_of({"ARC-V1-Feb2018.zip": zip_of(members)}, calls))
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in (SHARED / "arc").glob("*.jsonl"))
    assert len(get_task("arc-challenge", tmp_path).load()) == 1172
    ensure_task_data("arc", tmp_path, fetcher_of({}, calls))  # present: nothing fetched
    assert len(calls) == 1
    tampered = {**members, "ARC-V1-Feb2018-2/ARC-Easy/ARC-Easy-Test.jsonl": b"{}\n"}
    with pytest.raises(DownloadError, match="ARC-Easy-Test.jsonl has SHA-256"):
        ensure_task_data("arc", tmp_path / "other", fetcher_of({"ARC-V1-Feb2018.zip": zip_of(tampered)}, []))


def test_mmlu_download_maps_tar_members_into_splits(tmp_path):
    row = b"q,a,b,c,d,A\n"
    files = {f"data/{s}/anatomy_{s}.csv": row for s in ("dev", "val", "test")}
    files.update({"data/auxiliary_train/race.csv": row, "data/../evil.csv": row, "data/README.txt": b"x"})
    ensure_task_data("mmlu", tmp_path, fetcher_of({"data.tar": tar_of(files)}, []))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.csv")) == [
        "mmlu/auxiliary_train/race.csv", "mmlu/dev/anatomy_dev.csv", "mmlu/test/anatomy_test.csv",
        "mmlu/val/anatomy_val.csv"]
    assert len(get_task("mmlu", tmp_path).load("train")) == 1


@needs_shared
def test_file_downloads_retry_then_rename_and_refuse_a_bad_checksum(tmp_path):
    good = {name: (SHARED / "gsm8k" / name).read_bytes() for name in ("train.jsonl", "test.jsonl")}
    failures = []

    def flaky(url, destination):
        if len(failures) < 2:
            failures.append(url)
            destination.write_bytes(b"partial")
            raise OSError("connection reset")
        destination.write_bytes(good[url.rsplit("/", 1)[1]])

    ensure_task_data("gsm8k", tmp_path, flaky, backoff_seconds=0)
    assert len(failures) == 2 and not list(tmp_path.rglob("*.part"))
    assert len(get_task("gsm8k", tmp_path).load("test")) == 1319
    with pytest.raises(DownloadError, match="after 2 attempts.*SHA-256"):
        download_with_retry("https://x/test.jsonl", tmp_path / "t.jsonl", fetcher_of({"test.jsonl": b"{}"}, []),
                            sha256="0" * 64, attempts=2, backoff_seconds=0)
    assert not (tmp_path / "t.jsonl").exists() and not (tmp_path / "t.jsonl.part").exists()


def test_every_task_name_builds():
    assert [get_task(name).name for name in TASK_NAMES] == list(TASK_NAMES)
