"""CORE bundles damaged by hand: each is refused by `picochat eval core` with one line naming the file, the line
and the fix (exit 2), before anything is scored; nothing is silently wrong and core.json never holds NaN."""
import json
import re
from pathlib import Path

import pytest

from conftest import home_at
from picochat.cli import main
from test_eval_core import MC_ITEMS, SCHEMA_ITEMS, make_bundle, save_tiny_run


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    """A module-scoped $PICOCHAT_HOME holding a saved tiny run, "tiny"."""
    with home_at(tmp_path_factory.mktemp("home")) as root:
        save_tiny_run(root)
        yield root


def append(path: Path, data: bytes):
    with path.open("ab") as f:
        f.write(data)


def rewrite(path: Path, old: str, new: str):
    path.write_text(path.read_text().replace(old, new, 1))


def set_first_item(path: Path, items: list[dict], **fields):
    lines = path.read_text().splitlines()
    path.write_text("\n".join([json.dumps(items[0] | fields)] + lines[1:]) + "\n")


MC, SCHEMA = "eval_data/a/mc.jsonl", "eval_data/a/schema.jsonl"
DAMAGE = {  # what is done to the bundle -> what the one-line error must say
    "non-UTF-8 task file": (lambda b: append(b / MC, b'{"query": "\xff"}\n'),
                            r"a/mc\.jsonl:4: byte 0xff is not UTF-8; re-save the file as UTF-8"),
    "non-UTF-8 core.yaml": (lambda b: append(b / "core.yaml", b"# \xff\n"),
                            r"core\.yaml:6: byte 0xff is not UTF-8"),
    "non-UTF-8 baselines": (lambda b: append(b / "eval_meta_data.csv", b"caf\xe9,x,25\n"),
                            r"eval_meta_data\.csv:6: byte 0xe9 is not UTF-8"),
    "gold a string": (lambda b: set_first_item(b / MC, MC_ITEMS, gold="a"),
                      r"a/mc\.jsonl:1: `gold` 'a' is not an index into its 2 choices .*; fix or delete that line"),
    "gold a fraction": (lambda b: set_first_item(b / MC, MC_ITEMS, gold=1.5), r"a/mc\.jsonl:1: `gold` 1\.5 is not"),
    "gold past the choices": (lambda b: set_first_item(b / MC, MC_ITEMS, gold=2),
                              r"a/mc\.jsonl:1: `gold` 2 is not an index into its 2 choices \(a whole number 0 to 1\)"),
    "gold negative": (lambda b: set_first_item(b / MC, MC_ITEMS, gold=-1), r"a/mc\.jsonl:1: `gold` -1 is not"),
    "schema gold past the options": (lambda b: set_first_item(b / SCHEMA, SCHEMA_ITEMS, gold=7),
                                     r"a/schema\.jsonl:1: `gold` 7 is not an index into its 2 context_options"),
    "empty choices": (lambda b: set_first_item(b / MC, MC_ITEMS, choices=[]),
                      r"a/mc\.jsonl:1: `choices` must be a non-empty list of strings; got \[\]"),
    "choices not a list": (lambda b: set_first_item(b / MC, MC_ITEMS, choices="xy"),
                           r"a/mc\.jsonl:1: `choices` must be a non-empty list of strings"),
    "query not a string": (lambda b: set_first_item(b / MC, MC_ITEMS, query=3),
                           r"a/mc\.jsonl:1: `query` must be a string; got 3"),
    "num_fewshot a word": (lambda b: rewrite(b / "core.yaml", "num_fewshot: [0]", "num_fewshot: [abc]"),
                           r"core\.yaml, icl_tasks\[0\] \(mc_task\): num_fewshot \['abc'\] is not a whole number.*"
                           r"e\.g\. `num_fewshot: \[10\]`"),
    "num_fewshot a fraction": (lambda b: rewrite(b / "core.yaml", "num_fewshot: [0]", "num_fewshot: 1.5"),
                               r"icl_tasks\[0\] \(mc_task\): num_fewshot 1\.5 is not"),
    "num_fewshot empty": (lambda b: rewrite(b / "core.yaml", "num_fewshot: [0]", "num_fewshot: []"),
                          r"icl_tasks\[0\] \(mc_task\): num_fewshot \[\] is not"),
    "num_fewshot negative": (lambda b: rewrite(b / "core.yaml", "num_fewshot: [0]", "num_fewshot: [-2]"),
                             r"icl_tasks\[0\] \(mc_task\): num_fewshot \[-2\] is not"),
    "random baseline 100": (lambda b: rewrite(b / "eval_meta_data.csv", "mc_task,x,50", "mc_task,x,100"),
                            r"eval_meta_data\.csv:2: random baseline '100' of 'mc_task' must be a percent from 0 up "
                            r"to \(not including\) 100"),
    "random baseline nan": (lambda b: rewrite(b / "eval_meta_data.csv", "mc_task,x,50", "mc_task,x,nan"),
                            r"eval_meta_data\.csv:2: random baseline 'nan'"),
    "empty task file": (lambda b: (b / MC).write_text(""),
                        r"a/mc\.jsonl holds no items; re-download the bundle, or leave its task out with --tasks"),
    "blank task file": (lambda b: (b / MC).write_text("\n \n"), r"a/mc\.jsonl holds no items"),
    "every task file missing": (lambda b: [p.unlink() for p in (b / "eval_data").rglob("*.jsonl")],
                                r"none of the selected CORE tasks has its data file under .*eval_data; "
                                r"re-download the bundle with --download"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_bundle_is_one_line_naming_file_line_and_fix(damage, tiny_home, tmp_path, capsys):
    bundle = make_bundle(tmp_path / "bundle")
    damage_bundle, message = DAMAGE[damage]
    damage_bundle(bundle)
    with pytest.raises(SystemExit) as stopped:
        main(["eval", "core", "--run", "tiny", "--bundle", str(bundle), "--device", "cpu"])
    error = capsys.readouterr().err.strip()
    assert stopped.value.code == 2
    assert len(error.splitlines()) == 1 and error.startswith("picochat eval: error: "), error
    assert re.search(message, error), error
    assert not list(tiny_home.rglob("core.json"))  # nothing half-scored is written


def test_an_intact_bundle_still_scores_with_no_nan(tiny_home, tmp_path, capsys):
    run = save_tiny_run(tiny_home, name="intact")
    main(["eval", "core", "--run", "intact", "--bundle", str(make_bundle(tmp_path / "bundle")), "--device", "cpu"])
    written = [path.read_text() for path in run.rglob("core.json")]
    assert len(written) == 1 and "NaN" not in written[0]
    assert json.loads(written[0])["missing"] == ["absent_task"]
