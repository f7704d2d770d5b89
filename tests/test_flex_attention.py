"""FlexAttention for sliding windows (the CUDA path when FA3 is absent) against SDPA with a boolean mask.

T = 200 is not a multiple of FlexAttention's 128-token block, so the last block is partial. torch's CPU
FlexAttention has a compiled forward but no backward (it raises), so gradients are compared through the
eager reference implementation of the same operator (the CPU refusal patched out), and the compiled kernel
is checked on the forward, under torch.compile of the whole model as training compiles it.
"""
import pytest
import torch
import torch.nn.attention.flex_attention as flex_module

import picochat.model.gpt as gpt
from picochat.model.gpt import GPT, causal_attention, flex_window_attention
from test_model import randomize, tiny_config, tokens

T = 200
TOLERANCE = 1e-5  # fp32: both paths are exact softmax attention; only the summation order differs


def build_random(pattern: str, depth: int) -> GPT:
    torch.manual_seed(0)
    model = GPT(tiny_config(depth=depth, max_seq_len=T, window_pattern=pattern, n_kv_heads=1))
    model.init_weights()
    return randomize(model)


def loss_and_grads(model: GPT, idx, targets):
    model.zero_grad()
    loss = model(idx, targets)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.fixture
def flex_on_cpu(monkeypatch):
    """Route windowed layers through FlexAttention on CPU (eager reference, gradients allowed); count calls."""
    calls = []
    monkeypatch.setattr(flex_module, "_validate_device", lambda *tensors: None)
    monkeypatch.setattr(gpt, "_compiled_flex_attention", lambda: lambda *a, **kw: calls.append(1) or
                        flex_module.flex_attention(*a, **kw))
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("pattern, depth", [("L", 2), ("SL", 2), ("SSSL", 4)])
def test_flex_windows_match_sdpa_mask_outputs_and_gradients(flex_on_cpu, monkeypatch, pattern, depth):
    model = build_random(pattern, depth)
    idx, targets = tokens(model.config, 2, T), tokens(model.config, 2, T, seed=1)
    sdpa_loss, sdpa_grads = loss_and_grads(model, idx, targets)
    sdpa_logits = model(idx)
    assert not flex_on_cpu  # on CPU the model takes SDPA by itself
    monkeypatch.setattr(gpt, "_can_use_flex", lambda q: True)
    flex_loss, flex_grads = loss_and_grads(model, idx, targets)
    flex_logits = model(idx)
    short_windows = sum(window < T for window in model.config.window_sizes())
    assert len(flex_on_cpu) == 2 * short_windows  # only layers whose window is shorter than T; L stays SDPA
    assert torch.allclose(flex_logits, sdpa_logits, atol=TOLERANCE, rtol=0)
    assert torch.allclose(flex_loss, sdpa_loss, atol=TOLERANCE, rtol=0)
    for name, grad in sdpa_grads.items():
        assert torch.allclose(flex_grads[name], grad, atol=TOLERANCE, rtol=1e-4), name


def test_block_mask_is_built_once_per_shape():
    first = gpt.window_block_mask(T, 100, "cpu")
    assert gpt.window_block_mask(T, 100, "cpu") is first
    assert gpt.window_block_mask(T, 50, "cpu") is not first
    dense = first.to_dense()  # [1, 1, q_blocks, k_blocks]: 200 tokens are 2 blocks, the second partial
    assert dense.shape[-2:] == (2, 2) and dense[0, 0].tolist() == [[1, 0], [1, 1]]


@pytest.mark.slow
def test_compiled_flex_kernel_matches_sdpa_mask_in_a_compiled_model(monkeypatch):
    # the compiled CPU kernel, traced inside torch.compile(model) as training runs it (block mask built in-graph)
    monkeypatch.setattr(gpt, "_can_use_flex", lambda q: True)
    model = build_random("SSSL", 4)
    idx = tokens(model.config, 2, T)
    with torch.no_grad():
        compiled_logits = torch.compile(model, dynamic=False)(idx)
        monkeypatch.setattr(gpt, "_can_use_flex", lambda q: False)
        sdpa_logits = model(idx)
    assert torch.allclose(compiled_logits, sdpa_logits, atol=1e-4, rtol=0)  # Inductor reorders the fp32 sums


def test_flex_window_attention_with_grouped_heads_matches_causal_attention(monkeypatch):
    monkeypatch.setattr(gpt, "_compiled_flex_attention", lambda: flex_module.flex_attention)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, T, 16, generator=generator)
    k, v = (torch.randn(2, 2, T, 16, generator=generator) for _ in range(2))
    for window in (1, 37, 128, 199):
        expected = causal_attention(q, k, v, window, 0, scale=0.25)  # CPU: SDPA with the boolean mask
        assert torch.allclose(flex_window_attention(q, k, v, window, 0.25), expected, atol=TOLERANCE, rtol=0)
