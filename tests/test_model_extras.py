"""Smear and backout (nanochat's gpt.py): off is the model as it was, on is the formula, and cached decoding
equals recomputation. The optimizer group and the exporter's refusal are here too."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from picochat.export.hf_config import ExportError, check_supported
from picochat.model.accounting import flops_per_token, parameter_counts
from picochat.model.config import GPTConfig, ModelConfigError
from picochat.model.gpt import GPT
from picochat.model.kv_cache import KVCache
from picochat.optim.setup import OptimHParams, build_optimizer

from test_model import randomize, tokens

FIXTURE = Path(__file__).parent / "fixtures" / "gpt_d3_before_extras.json"
EXTRAS = [dict(smear=True), dict(backout=True), dict(smear=True, backout=True)]


def config(**overrides) -> GPTConfig:
    fields = dict(depth=3, vocab_size=100, aspect_ratio=32, head_dim=16, max_seq_len=32, window_pattern="SL")
    return GPTConfig(**{**fields, **overrides})


def build(cfg: GPTConfig, seed: int = 0) -> GPT:
    """As training builds it: on the meta device (so constructing draws nothing), then initialised."""
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device="cpu")
    torch.manual_seed(seed)
    model.init_weights()
    return model


@torch.no_grad()
def with_live_extras(model: GPT) -> GPT:
    """Random weights everywhere, and λs that matter (smear's starts at 0, which would hide it)."""
    randomize(model)
    if model.smear_lambda is not None:
        model.smear_lambda.fill_(0.7)
        model.smear_gate.weight.copy_(torch.linspace(-1.0, 1.0, 24))
    if model.backout_lambda is not None:
        model.backout_lambda.fill_(0.35)
    return model


# --- off: the model before the extras, bit for bit ---------------------------------------------

def test_with_the_extras_off_the_model_is_the_one_before_them():
    """The fixture was computed by picochat's gpt.py before smear and backout existed (seed 0, this config)."""
    expected = json.loads(FIXTURE.read_text())
    torch.manual_seed(0)  # built as the fixture was: directly on the CPU, so the constructors draw too
    model = GPT(config())
    model.init_weights()
    state = model.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == expected["keys"]
    for name, (total, squares) in expected["init_sums"].items():  # the same RNG draws, in the same order
        assert float(state[name].double().sum()) == pytest.approx(total, rel=1e-9, abs=1e-9), name
        assert float(state[name].double().square().sum()) == pytest.approx(squares, rel=1e-9), name
    with torch.no_grad():
        logits = randomize(model)(tokens(model.config, 2, 12))
    for (b, t), row in zip(((0, 0), (0, 11), (1, 5), (1, 11)), expected["logits_rows"]):
        assert logits[b, t, :6].tolist() == pytest.approx(row, rel=1e-5, abs=1e-6)
    assert float(logits.double().sum()) == pytest.approx(expected["logits_sum"], rel=1e-5)


@pytest.mark.parametrize("extras", EXTRAS)
def test_extras_with_their_lambdas_at_zero_compute_exactly_the_model_without_them(extras):
    off, on = build(config()), build(config(**extras))
    on_state = on.state_dict()
    for name, value in off.state_dict().items():  # the extras' weights are drawn after every other one
        assert torch.equal(on_state[name], value), name
    with torch.no_grad():
        if on.backout_lambda is not None:
            on.backout_lambda.zero_()
        idx = tokens(off.config, 2, 12)
        assert torch.equal(on(idx), off(idx))  # smear's λ starts at 0: it adds exactly nothing


# --- on: the formulas ---------------------------------------------------------------------------

def reference_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The forward pass written from the formulas, one position at a time for smear:
    x_t += λ_s·σ(w·x_t[:24])·x_{t-1} (t ≥ 1) on the normed embeddings; x -= λ_b·(x after block n//2)."""
    cfg = model.config
    emb = F.rms_norm(model.wte(idx), (cfg.width,))
    x = emb.clone()
    if cfg.smear:
        for t in range(1, idx.size(1)):
            gate = model.smear_lambda * torch.sigmoid(emb[:, t, :24] @ model.smear_gate.weight[0])
            x[:, t] = emb[:, t] + gate[:, None] * emb[:, t - 1]
    x0, cos, sin = x, model.cos[:, :idx.size(1)], model.sin[:, :idx.size(1)]
    for i, block in enumerate(model.blocks):
        x = model.resid_lambdas[i] * x + model.x0_lambdas[i] * x0
        value_embed = model.value_embeds[str(i)](idx) if str(i) in model.value_embeds else None
        x = block(x, value_embed, cos, sin, None)
        if i == cfg.n_layers // 2:
            middle = x
    if cfg.backout:
        x = x - model.backout_lambda * middle
    logits = F.rms_norm(x, (cfg.width,)) @ model.lm_head.weight.T
    return cfg.softcap * torch.tanh(logits[..., :cfg.vocab_size] / cfg.softcap)


@pytest.mark.parametrize("extras", EXTRAS)
def test_extras_on_match_their_formulas(extras):
    model = with_live_extras(build(config(**extras)))
    idx = tokens(model.config, 2, 9)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference_logits(model, idx), rtol=1e-5, atol=1e-5)
        plain = with_live_extras(build(config()))
        assert not torch.allclose(model(idx), plain(idx), atol=1e-3)  # and they change the output


def test_backout_on_one_layer_subtracts_from_the_last_block_itself():
    model = with_live_extras(build(GPTConfig(depth=1, vocab_size=100, aspect_ratio=32, head_dim=16,
                                             max_seq_len=32, backout=True)))
    idx = tokens(model.config, 1, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference_logits(model, idx), rtol=1e-5, atol=1e-5)


def test_extras_are_initialised_as_nanochat_does():
    model = build(config(smear=True, backout=True))
    assert model.smear_lambda.item() == 0.0 and model.backout_lambda.item() == pytest.approx(0.2)
    gate = model.smear_gate.weight
    assert gate.shape == (1, 24) and ((gate >= 0) & (gate <= 0.02)).all() and gate.std() > 0


def test_smear_needs_the_24_channels_its_gate_reads():
    with pytest.raises(ModelConfigError, match="smear needs a width of at least 24"):
        GPTConfig(depth=1, aspect_ratio=16, head_dim=16, smear=True)


# --- smear with the KV cache: cached decoding equals recomputation ------------------------------

@pytest.mark.parametrize("extras", EXTRAS)
def test_cached_decoding_with_extras_equals_full_recomputation(extras):
    model = with_live_extras(build(config(**extras, max_seq_len=16)))
    generated = tokens(model.config, 2, 7)
    cache = KVCache(model.config, batch_size=2, max_len=20)
    with torch.no_grad():
        model(generated[:, :3], kv_cache=cache)  # prefill in two chunks: the second's first token smears the first's last
        logits = model(generated[:, 3:], kv_cache=cache)
        for _ in range(13):
            full = model(generated)[:, -1]
            torch.testing.assert_close(logits[:, -1], full, rtol=1e-4, atol=1e-4)
            next_token = full.argmax(dim=-1, keepdim=True)
            generated = torch.cat((generated, next_token), dim=1)
            logits = model(next_token, kv_cache=cache)


def test_ragged_rows_with_smear_each_decode_like_their_sequence_recomputed():
    """Continuous batching: rows inserted from their own prefills sit at different positions; each decode step
    (and a compaction by move_rows) must keep each row's previous embedding with that row."""
    model = with_live_extras(build(config(smear=True, backout=True, max_seq_len=16)))
    prompts = [tokens(model.config, 1, 5, seed=1), tokens(model.config, 1, 3, seed=2), tokens(model.config, 1, 4, seed=3)]
    cache = KVCache(model.config, batch_size=3, max_len=16)
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            prefill = KVCache(model.config, batch_size=1, max_len=prompt.size(1))
            model(prompt, kv_cache=prefill)
            cache.insert(prefill, [row])
        sequences = [p[0].tolist() for p in prompts]
        for step in range(6):
            if step == 3:  # row 0 leaves; rows 1 and 2 move to the front, as the engine compacts them
                cache.move_rows([1, 2], [0, 1])
                sequences = sequences[1:]
            rows = len(sequences)
            next_tokens = torch.tensor([[(7 * step + 3 * r) % 100] for r in range(rows)])
            logits = model(next_tokens, kv_cache=cache)[:, -1]
            for r in range(rows):
                sequences[r].append(int(next_tokens[r]))
                full = model(torch.tensor([sequences[r]]))[0, -1]
                torch.testing.assert_close(logits[r], full, rtol=1e-4, atol=1e-4)


def test_a_reset_cache_forgets_the_previous_embedding():
    model = with_live_extras(build(config(smear=True)))
    idx = tokens(model.config, 1, 6)
    cache = KVCache(model.config, batch_size=1, max_len=12)
    with torch.no_grad():
        model(tokens(model.config, 1, 4, seed=5), kv_cache=cache)
        cache.reset()
        torch.testing.assert_close(model(idx, kv_cache=cache), model(idx), rtol=1e-5, atol=1e-5)


# --- accounting, optimizer group, exporter ---------------------------------------------------------

@pytest.mark.parametrize("extras", [{}, *EXTRAS])
def test_parameter_counts_and_flops_follow_the_extras(extras):
    cfg = config(**extras)
    with torch.device("meta"):
        model = GPT(cfg)
    counts = {name: sum(p.numel() for p in params) for name, params in model.param_groups().items()}
    counts["total"] = model.num_params()
    assert counts == parameter_counts(cfg)
    assert counts["smear_backout"] == 25 * cfg.smear + cfg.backout  # gate 24 + λ, and backout's λ
    # the smear gate is one 24 -> 1 matmul per token: 6 FLOPs per weight; backout is elementwise
    assert flops_per_token(cfg) - flops_per_token(config()) == 6 * 24 * cfg.smear


def test_smear_and_backout_scalars_get_nanochats_adamw_group():
    model = build(config(smear=True, backout=True))
    optimizer = build_optimizer(model.param_groups(), OptimHParams(), model.config.width)
    group = next(g for g in optimizer.param_groups if g["name"] == "smear_backout")
    assert [id(p) for p in group["params"]] == [id(model.smear_gate.weight), id(model.smear_lambda),
                                                id(model.backout_lambda)]
    assert (group["kind"], group["lr"], group["betas"], group["eps"], group["weight_decay"]) == \
        ("adamw", 0.2, (0.8, 0.95), 1e-10, 0.0)
    plain = build_optimizer(build(config()).param_groups(), OptimHParams(), 64)
    assert "smear_backout" not in [g["name"] for g in plain.param_groups]  # off: the optimizer as before


@pytest.mark.parametrize("flag", ["smear", "backout"])
def test_the_exporter_refuses_a_run_trained_with_an_extra(flag):
    recorded = {**json.loads(json.dumps(config().__dict__)), flag: True}
    with pytest.raises(ExportError, match=f"--{flag}, which is not supported by the exporter yet"):
        check_supported(recorded, "run 'x'")
    assert check_supported({**recorded, flag: False}, "run 'x'") == config()
