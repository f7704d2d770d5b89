"""The export's README.md: what the model is, how it was trained and how it scored, from the run's own records.

Everything comes from files picochat leaves in run directories (config.json, env.json, metrics.jsonl,
bpb.json, core.json, chat_eval.json) and the checkpoint's meta.json; what a run did not record is said
to be missing rather than left out.
"""
from __future__ import annotations

from pathlib import Path

from picochat.checkpoint import CHECKPOINTS
from picochat.errors import PicochatError
from picochat.lab.runs import fmt, load_run, read_json, summarize
from picochat.model.accounting import parameter_counts
from picochat.model.config import GPTConfig

CHAT_EVAL_FILE = "chat_eval.json"
MISSING = "not recorded"
MAX_LINEAGE = 8  # an RL run of an SFT run of a base run is three; the cap only guards against a cycle


def run_of(checkpoint: Path) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else checkpoint


def lineage(checkpoint: Path, meta: dict) -> list[tuple[Path, dict]]:
    """(run dir, checkpoint meta) of this run, then the run it was fine-tuned from, and so on."""
    chain = [(run_of(checkpoint), meta)]
    while len(chain) < MAX_LINEAGE and (parent := chain[-1][1].get("from_run")):
        parent_meta = read_json(Path(parent) / "meta.json")
        if parent_meta is None:
            chain.append((run_of(Path(parent)), {}))
            break
        chain.append((run_of(Path(parent)), parent_meta))
    return chain


def value(x, kind: str = "") -> str:
    return MISSING if x is None else fmt(x, kind)


def training_section(run: Path, meta: dict) -> list[str]:
    try:
        summary = summarize(load_run(run))
    except PicochatError:
        summary = {}
    config = meta.get("run_config") or {}
    stage = meta.get("stage", "pretraining")
    bpb = read_json(run / "bpb.json") or {}
    return [
        f"### {stage}: run `{run.name}`", "",
        "| | |", "|---|---|",
        f"| data | {config.get('mixture') or meta.get('dataset') or config.get('dataset') or MISSING} |",
        f"| tokenizer | {meta.get('tokenizer') or MISSING} |",
        f"| steps | {value(summary.get('steps'), 'int')} |",
        f"| tokens | {value(summary.get('tokens'), 'sci')} |",
        f"| training FLOPs | {value(summary.get('flops'), 'sci')} |",
        f"| wall-clock | {value(summary.get('time'), 'time')} on {summary.get('world_size', 1)} x "
        f"{summary.get('device') or MISSING} |",
        f"| validation bpb (last evaluation) | {value(summary.get('val_bpb'), 'bpb')} |",
        f"| `eval bpb` | {', '.join(f'{k} {v}' for k, v in bpb.items()) or MISSING} |",
        f"| CORE | {value(summary.get('core'), 'bpb')} |", "",
    ]


def chat_eval_section(run: Path) -> list[str]:
    results = read_json(run / CHAT_EVAL_FILE)
    if not results:
        return [f"Chat evaluations: {MISSING} (`picochat eval chat --run {run.name}` writes them).", ""]
    rows = [f"| {task} | {fmt(r.get('accuracy'), 'pct')} | {fmt(r.get('centered'), 'bpb')} |"
            for task, r in sorted(results.get("tasks", {}).items())]
    return ["| chat task | accuracy | centered |", "|---|---|---|", *rows, "",
            f"ChatCORE (mean centered accuracy): {value(results.get('chatcore'), 'bpb')}", ""]


def provenance_section(run: Path, checkpoint: Path, meta: dict, dtype: str) -> list[str]:
    env = read_json(run / "env.json") or {}
    commit = env.get("commit")
    dirty = " (with uncommitted changes)" if env.get("dirty") else ""
    return [
        f"- exported from `{checkpoint}` (step {meta.get('step', MISSING)}) in {dtype}",
        f"- trained with picochat {env.get('picochat', MISSING)}, commit {commit or MISSING}{dirty}, "
        f"torch {env.get('torch', MISSING)}, {env.get('dtype', MISSING)} on {env.get('device_name', MISSING)}",
        "",
    ]


def model_card(name: str, checkpoint: Path, meta: dict, cfg: GPTConfig, dtype: str) -> str:
    chain = lineage(checkpoint, meta)
    params = parameter_counts(cfg)["total"]
    windows = ", ".join(str(w) for w in cfg.window_sizes())
    lines = [
        "---", "library_name: transformers", "tags: [picochat, custom_code]", "---", "",
        f"# {name}", "",
        f"A {params / 1e6:.1f}M-parameter language model trained from scratch with picochat "
        f"({meta.get('stage', 'base')} stage). The modelling code ships with the weights, so load it with "
        "`trust_remote_code=True`:", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
        "model = AutoModelForCausalLM.from_pretrained(PATH, trust_remote_code=True)",
        "tokenizer = AutoTokenizer.from_pretrained(PATH, trust_remote_code=True)  # else transformers asks first",
        "chat = pipeline('text-generation', model=model, tokenizer=tokenizer)",
        "print(chat([{'role': 'user', 'content': 'Why is the sky blue?'}], max_new_tokens=64))",
        "```", "",
        "## Architecture", "",
        f"Depth {cfg.depth}, width {cfg.width}, {cfg.n_heads} query heads and {cfg.kv_heads} key/value heads of "
        f"{cfg.head_dim} channels, context {cfg.max_seq_len} tokens, attention windows per layer [{windows}] "
        f"(pattern {cfg.window_pattern}), vocabulary {cfg.vocab_size} (padded to {cfg.padded_vocab_size}), "
        f"{params:,} parameters. Rotary embeddings (base {cfg.rope_base:g}), QK-norm, ReLU² MLP, gated value "
        f"embeddings on alternating layers, learned residual and x0 scalars, logits soft-capped at {cfg.softcap:g}.",
        "",
        "## Training", "",
    ]
    for run, run_meta in chain:
        lines += training_section(run, run_meta)
    lines += ["## Chat evaluations", "", *chat_eval_section(chain[0][0]),
              "## Provenance", "", *provenance_section(chain[0][0], checkpoint, meta, dtype),
              "## Notes", "",
              "- Conversations use picochat's format (the chat template): a system message is merged into the first "
              "user turn; tool calls are assistant content parts `{'type': 'python', 'text': ...}` and their results "
              "`{'type': 'python_output', ...}`.",
              "- Plain text is tokenized with a leading `<|bos|>`, as in training. The special tokens' strings in "
              "text are read as special tokens by `tokenizers`, while picochat encodes them as ordinary bytes.", ""]
    return "\n".join(lines)

