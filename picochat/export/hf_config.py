"""config.json and generation_config.json: picochat's model shape in transformers' terms, and back."""
from __future__ import annotations

import dataclasses

from picochat.errors import PicochatError
from picochat.model.accounting import VE_GATE_CHANNELS
from picochat.model.config import GPTConfig
from picochat.model.gpt import QK_SCALE

VE_GATE_SCALE = 3.0  # gpt.py gates value embeddings by 3 * sigmoid(...)
MLP_RATIO = 4  # gpt.py's MLP is width -> 4 x width -> width
MODEL_TYPE = "picochat"
MODEL_CLASS = "PicochatForCausalLM"
AUTO_MAP = {"AutoConfig": "configuration_picochat.PicochatConfig",
            "AutoModelForCausalLM": "modeling_picochat.PicochatForCausalLM"}
KNOWN_FIELDS = {f.name for f in dataclasses.fields(GPTConfig)}
NOT_EXPORTED_YET = ("smear", "backout")  # GPTConfig flags hf_files/modeling_picochat.py does not implement


class ExportError(PicochatError):
    """A run, folder or flag that cannot be exported or imported."""


def check_supported(model_config: dict, source: str) -> GPTConfig:
    """The GPTConfig of a checkpoint, refused if it carries a flag the exported modelling code does not know."""
    unknown = sorted(set(model_config) - KNOWN_FIELDS)
    if unknown:
        raise ExportError(f"{source} has architecture flags the Hugging Face modelling code does not implement: "
                          f"{', '.join(unknown)}; export a run trained without them")
    on = [name for name in NOT_EXPORTED_YET if model_config.get(name)]
    if on:
        raise ExportError(f"{source} was trained with {', '.join('--' + name for name in on)}, which is not supported "
                          f"by the exporter yet; export a run trained without it")
    return GPTConfig(**model_config)


def hf_config(cfg: GPTConfig, dtype: str, special_ids: dict[str, int], provenance: dict) -> dict:
    """config.json: every shape field and constant, the auto classes, and picochat's own config for import-hf."""
    return {
        "model_type": MODEL_TYPE, "architectures": [MODEL_CLASS], "auto_map": AUTO_MAP,
        "vocab_size": cfg.vocab_size, "padded_vocab_size": cfg.padded_vocab_size,
        "hidden_size": cfg.width, "intermediate_size": MLP_RATIO * cfg.width,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "window_pattern": cfg.window_pattern, "window_sizes": cfg.window_sizes(),
        "value_embedding_layers": [i for i in range(cfg.n_layers) if cfg.has_value_embedding(i)],
        "softcap": cfg.softcap, "rope_base": cfg.rope_base, "qk_scale": QK_SCALE,
        "ve_gate_channels": VE_GATE_CHANNELS, "ve_gate_scale": VE_GATE_SCALE,
        "bos_token_id": special_ids["<|bos|>"], "eos_token_id": special_ids["<|assistant_end|>"],
        "pad_token_id": special_ids["<|assistant_end|>"],
        "tie_word_embeddings": False, "use_cache": True, "torch_dtype": dtype,
        "picochat": {"model_config": dataclasses.asdict(cfg), **provenance},
    }


def generation_config(special_ids: dict[str, int]) -> dict:
    """Stop where picochat's engine stops (the assistant's end, or a new document); replies of at most 256 tokens
    unless asked otherwise, as picochat's engine (SamplingParams.max_tokens)."""
    stops = [special_ids["<|assistant_end|>"], special_ids["<|bos|>"]]
    return {"bos_token_id": special_ids["<|bos|>"], "eos_token_id": stops,
            "pad_token_id": special_ids["<|assistant_end|>"], "max_new_tokens": 256}


def gpt_config_from_hf(config: dict, source: str) -> GPTConfig:
    """The GPTConfig an export recorded, checked against the transformers fields beside it."""
    recorded = (config.get("picochat") or {}).get("model_config")
    if config.get("model_type") != MODEL_TYPE or not isinstance(recorded, dict):
        raise ExportError(f"{source} is not a picochat export (config.json needs model_type {MODEL_TYPE!r} and a "
                          f"'picochat' section); import folders written by `picochat export`")
    cfg = check_supported(recorded, source)
    expected = hf_config(cfg, config.get("torch_dtype", "float32"), {"<|bos|>": 0, "<|assistant_end|>": 0}, {})
    shape = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "head_dim", "max_position_embeddings", "window_sizes", "value_embedding_layers", "softcap", "rope_base")
    changed = [k for k in shape if config.get(k) != expected[k]]
    if changed:
        raise ExportError(f"{source}: config.json's {', '.join(changed)} disagree with the picochat model config "
                          f"recorded beside them; the folder was edited after export, re-export it")
    return cfg
