import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import picochat
import picochat.model.gpt as gpt
from picochat.model.accounting import parameter_counts
from picochat.model.config import GPTConfig
from picochat.model.gpt import GPT, Linear, SoftcappedCrossEntropy, causal_attention, soft_cap
from picochat.model.kv_cache import KVCache
from picochat.runtime import compute_dtype

GROUPS = {"matrix", "embedding", "value_embedding", "lm_head", "resid_lambda", "x0_lambda", "smear_backout"}


def tiny_config(**overrides) -> GPTConfig:
    fields = dict(depth=2, vocab_size=100, aspect_ratio=32, head_dim=16, max_seq_len=32, window_pattern="SL")
    return GPTConfig(**{**fields, **overrides})


def build(config: GPTConfig, dtype=torch.float32, seed=0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config, dtype)
    model.init_weights()
    return model


@torch.no_grad()
def randomize(model: GPT, seed=1) -> GPT:
    """Give every weight (including the zero-initialised projections) a random value, so each path matters."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            noise = torch.randn(p.shape, generator=generator) / math.sqrt(p.size(1))
            p.copy_(noise * (3.0 if name == "lm_head.weight" else 1.0))
    return model


def tokens(config: GPTConfig, B: int, T: int, seed=0) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("depth, head_dim, n_kv_heads", [
    (1, 16, None), (2, 32, None), (3, 64, None), (4, 16, 2), (4, 64, None)])
def test_forward_backward_shapes_at_every_small_size(depth, head_dim, n_kv_heads):
    config = GPTConfig(depth=depth, vocab_size=100, aspect_ratio=32, head_dim=head_dim,
                       n_kv_heads=n_kv_heads, max_seq_len=16, window_pattern="SSSL")
    model = randomize(build(config))
    idx = tokens(config, 2, 16)
    logits = model(idx)
    assert logits.shape == (2, 16, config.vocab_size)  # padded rows (100 -> 128) sliced off
    assert logits.dtype == torch.float32
    loss = model(idx, targets=tokens(config, 2, 16, seed=1))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_loss_reduction_none_gives_per_token_nats_and_zero_where_ignored():
    config = tiny_config()
    model = randomize(build(config))
    idx, targets = tokens(config, 2, 8), tokens(config, 2, 8, seed=1)
    targets[0, :3] = -1
    per_token = model(idx, targets, loss_reduction="none")
    assert per_token.shape == (2, 8)
    assert (per_token[0, :3] == 0).all() and (per_token[targets != -1] > 0).all()
    mean = model(idx, targets)
    torch.testing.assert_close(mean, per_token[targets != -1].mean())


def test_loss_falls_when_overfitting_one_batch():
    config = tiny_config(vocab_size=64, aspect_ratio=32, max_seq_len=16)
    model = build(config)
    idx = tokens(config, 4, 17)
    inputs, targets = idx[:, :-1], idx[:, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = model(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(64), abs=0.2)  # lm_head starts near zero: uniform
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("chunk_elements", [2**20, 300])  # one chunk; chunks of 3 rows
def test_fused_softcapped_loss_matches_autograd_of_the_formula(monkeypatch, chunk_elements):
    monkeypatch.setattr(gpt, "CPU_CHUNK_ELEMENTS", chunk_elements)
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(10, 100, generator=generator) * 20  # well past the cap of 15
    targets = torch.randint(0, 100, (10,), generator=generator)
    targets[3] = -1
    upstream = torch.rand(10, generator=generator)
    fused_logits, plain_logits = raw.clone().requires_grad_(), raw.clone().requires_grad_()
    fused = SoftcappedCrossEntropy.apply(fused_logits, targets, 15.0)
    plain = F.cross_entropy(torch.tanh(plain_logits / 15.0) * 15.0, targets, ignore_index=-1, reduction="none")
    (fused * upstream).sum().backward()
    (plain * upstream).sum().backward()
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(fused_logits.grad, plain_logits.grad)


def test_logits_are_soft_capped():
    config = tiny_config()
    model = build(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(std=100.0)  # raw logits in the thousands
    logits = model(tokens(config, 2, 8))
    assert logits.abs().max() <= config.softcap
    assert logits.abs().max() > 0.99 * config.softcap
    with torch.no_grad():  # inference may ask for the logits before the cap (a greedy pick needs only their argmax)
        raw = model(tokens(config, 2, 8), capped=False)
    assert raw.abs().max() > 100 * config.softcap
    torch.testing.assert_close(soft_cap(raw, config.softcap), logits.detach())


def test_a_model_for_inference_holds_its_matrices_in_bf16_and_gives_the_same_logits():
    """Linear keeps fp32 masters and casts them per forward; for_inference casts once, to the same weights."""
    config = tiny_config(smear=True)
    model = build(config, torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(std=p.size(1) ** -0.5)  # the zero-initialised projections count too
        before = model(tokens(config, 2, 8))
    model.for_inference()
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(tokens(config, 2, 8)), before)


@pytest.mark.parametrize("window, q_start, T", [(3, 0, 8), (8, 0, 8), (3, 5, 4), (3, 7, 1), (20, 7, 1)])
def test_causal_attention_sees_exactly_the_window(window, q_start, T):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, T, 8, generator=generator)
    k, v = torch.randn(2, 2, 2, q_start + T, 8, generator=generator)  # 2 kv heads: grouped-query
    out = causal_attention(q, k, v, window, q_start, scale=0.5)
    for t in range(T):
        i = q_start + t
        keys = range(max(0, i - window + 1), i + 1)  # the `window` latest keys, itself included
        kk, vv = k[:, :, keys].repeat_interleave(2, dim=1), v[:, :, keys].repeat_interleave(2, dim=1)
        weights = torch.softmax(0.5 * q[:, :, t:t + 1] @ kk.transpose(-1, -2), dim=-1)
        torch.testing.assert_close(out[:, :, t:t + 1], weights @ vv)


@pytest.mark.parametrize("n_kv_heads", [None, 1])
def test_greedy_decoding_with_kv_cache_matches_full_recomputation(n_kv_heads):
    # max_seq_len 16 with windows S=8, L=16; decoding to 28 tokens runs past both windows
    config = tiny_config(depth=3, max_seq_len=16, n_kv_heads=n_kv_heads, window_pattern="SSL")
    model = randomize(build(config))
    generated = tokens(config, 2, 6)
    cache = KVCache(config, batch_size=2, max_len=28)
    with torch.no_grad():
        logits = model(generated[:, :4], kv_cache=cache)  # prefill in two chunks: the second starts at pos 4
        logits = model(generated[:, 4:], kv_cache=cache)
        for _ in range(22):
            full_logits = model(generated)[:, -1]  # the whole sequence recomputed without the cache
            torch.testing.assert_close(logits[:, -1], full_logits, atol=1e-4, rtol=1e-4)
            next_token = logits[:, -1].argmax(dim=-1, keepdim=True)
            assert torch.equal(next_token, full_logits.argmax(dim=-1, keepdim=True))
            generated = torch.cat((generated, next_token), dim=1)
            logits = model(next_token, kv_cache=cache)
    assert cache.pos == 28


def test_prefill_copied_into_sample_rows_decodes_like_the_single_row():
    config = tiny_config(max_seq_len=16)
    model = randomize(build(config))
    prompt = tokens(config, 1, 5)
    with torch.no_grad():
        prefill = KVCache(config, batch_size=1, max_len=5)
        logits = model(prompt, kv_cache=prefill)
        cache = KVCache.from_prefill(prefill, batch_size=3, max_len=12)
        assert (cache.batch_size, cache.max_len, cache.pos) == (3, 12, 5)
        next_token = logits[:, -1].argmax(dim=-1, keepdim=True).expand(3, 1)
        rows = [next_token]
        for _ in range(6):
            logits = model(rows[-1], kv_cache=cache)
            rows.append(logits[:, -1].argmax(dim=-1, keepdim=True))
    generated = torch.cat((prompt.expand(3, -1), *rows), dim=1)
    expected = model.generate_greedy(prompt, 7)
    assert torch.equal(generated, expected.expand(3, -1))


def test_kv_cache_overflow_and_reset():
    config = tiny_config()
    model = build(config)
    cache = KVCache(config, batch_size=1, max_len=4)
    with torch.no_grad():
        model(tokens(config, 1, 4), kv_cache=cache)
        with pytest.raises(ValueError, match="overflow"):
            model(tokens(config, 1, 1), kv_cache=cache)
    cache.reset()
    assert cache.pos == 0


def test_float32_dtype_keeps_every_activation_in_fp32(monkeypatch):
    monkeypatch.setenv("PICOCHAT_DTYPE", "float32")
    dtype = compute_dtype(torch.device("cpu"))
    assert dtype == torch.float32
    config = tiny_config()
    model = build(config, dtype)
    seen = []
    for module in model.modules():
        module.register_forward_hook(lambda m, args, out: seen.append((type(m).__name__, out.dtype)))
    model(tokens(config, 2, 8))
    assert seen and all(out_dtype == torch.float32 for _, out_dtype in seen), seen


def test_bf16_compute_runs_matmuls_in_bf16_with_fp32_master_weights():
    config = tiny_config()
    model = randomize(build(config, torch.bfloat16))
    linear_dtypes = []
    for module in model.modules():
        if isinstance(module, Linear):
            assert module.weight.dtype == torch.float32
            module.register_forward_hook(lambda m, args, out: linear_dtypes.append((args[0].dtype, out.dtype)))
    assert model.wte.weight.dtype == torch.bfloat16
    idx = tokens(config, 2, 8)
    logits = model(idx)
    assert logits.dtype == torch.float32
    assert linear_dtypes and all(d == (torch.bfloat16, torch.bfloat16) for d in linear_dtypes)
    model(idx, targets=tokens(config, 2, 8, seed=1)).backward()
    assert model.blocks[0].attn.c_q.weight.grad.dtype == torch.float32


def test_fp16_compute_keeps_embeddings_in_fp32():
    model = GPT(tiny_config(), torch.float16)
    assert model.wte.weight.dtype == torch.float32
    assert all(e.weight.dtype == torch.float32 for e in model.value_embeds.values())


def test_no_autocast_in_the_package():
    # precision is explicit (Linear casts its weight), never the automatic-mixed-precision context;
    # a call or an import is an offence, a docstring saying "no autocast" is not
    usage = re.compile(r"autocast\s*\(|import\s.*\bautocast\b")
    offenders = [str(path) for path in Path(picochat.__file__).parent.rglob("*.py") if usage.search(path.read_text())]
    assert offenders == []


def test_param_groups_hold_every_parameter_exactly_once():
    model = GPT(tiny_config(depth=3))
    groups = model.param_groups()
    assert set(groups) == GROUPS
    grouped = [id(p) for params in groups.values() for p in params]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters()}
    assert all(p.dim() == 2 for p in groups["matrix"])


@pytest.mark.parametrize("overrides", [{}, {"depth": 3, "n_kv_heads": 1}, {"depth": 4, "head_dim": 32}])
def test_parameter_counts_match_accounting(overrides):
    config = tiny_config(**overrides)
    with torch.device("meta"):
        model = GPT(config)
    counts = {name: sum(p.numel() for p in params) for name, params in model.param_groups().items()}
    counts["total"] = model.num_params()
    assert counts == parameter_counts(config)


def test_init_zeroes_output_projections_and_sets_scalars():
    config = tiny_config(depth=4)
    model = build(config)
    for block in model.blocks:
        assert (block.attn.c_proj.weight == 0).all() and (block.mlp.c_proj.weight == 0).all()
        assert block.attn.c_q.weight.abs().max() <= math.sqrt(3 / config.width)
    torch.testing.assert_close(model.resid_lambdas.data, torch.linspace(1.15, 1.05, 4))
    torch.testing.assert_close(model.x0_lambdas.data, torch.linspace(0.20, 0.05, 4))
    gates = [b.attn.ve_gate.weight for b in model.blocks if b.attn.ve_gate is not None]
    assert len(gates) == len(model.value_embeds) == 2  # layers 1 and 3: alternating, last included
    assert all(((g >= 0) & (g <= 0.02)).all() for g in gates)
    assert model.lm_head.weight.std().item() == pytest.approx(0.001, rel=0.1)


def test_build_on_meta_device_then_materialise():
    config = tiny_config()
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    model.init_weights()
    reference = GPT(config)
    torch.testing.assert_close(model.cos, reference.cos)
    torch.testing.assert_close(model.sin, reference.sin)
    assert torch.isfinite(model(tokens(config, 1, 8))).all()


def test_a_width_too_narrow_for_the_value_embedding_gate_is_refused():
    from picochat.model.config import GPTConfig, ModelConfigError
    with pytest.raises(ModelConfigError, match="at least 12"):
        GPTConfig(depth=1, aspect_ratio=4, head_dim=4)


def test_last_only_gives_the_last_positions_logits_with_and_without_a_cache():
    config = tiny_config(window_pattern="SL")
    model = randomize(build(config))
    idx = torch.randint(0, config.vocab_size, (2, 11))
    full = model(idx)
    last = model(idx, last_only=True)
    assert last.shape == (2, 1, config.vocab_size)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=0)
    cache = KVCache(config, 2, 16)
    cached = model(idx, kv_cache=cache, last_only=True)
    torch.testing.assert_close(cached[:, 0], full[:, -1], atol=1e-5, rtol=0)
    assert cache.positions(2).tolist() == [11, 11]  # the cache still holds every position
    with pytest.raises(ValueError, match="targets"):
        model(idx, idx, last_only=True)
