"""The GPT network: a decoder-only transformer whose every size follows from `GPTConfig`.

Precision is explicit (no autocast: nanochat dev/LOG.md 2026-03-04): each `Linear` keeps an fp32 master weight and casts it to the dtype of
its input, so the compute dtype is simply the dtype of the activations. Nothing else changes precision
except the logits, which are soft-capped and returned in fp32.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

try:  # FlexAttention (torch >= 2.5); without it windows stay on SDPA with a boolean mask
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:
    create_block_mask = flex_attention = None

from picochat.model.accounting import SMEAR_GATE_CHANNELS, VE_GATE_CHANNELS
from picochat.model.config import GPTConfig
from picochat.model.kv_cache import KVCache

QK_SCALE = 1.2  # q and k are multiplied by it after QK-norm (nanochat)
ROTARY_MARGIN = 10  # rotary tables cover 10x max_seq_len, so inference may run past the training length
CPU_CHUNK_ELEMENTS = 2**20  # 4 MB of fp32 logits per chunk: the loss's elementwise passes run in cache


class Linear(nn.Linear):
    """A bias-free linear layer with an fp32 master weight, computed in the dtype of its input."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


def norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


def soft_cap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap·tanh(logits / cap): logits squashed smoothly into (-cap, cap) (Gemma 2, arXiv 2408.00118), in fp32."""
    return torch.tanh(logits / cap) * cap


def rotary_tables(head_dim: int, length: int, base: float, dtype: torch.dtype, device=None):
    """cos and sin of shape [1, length, 1, head_dim/2], broadcasting over batch and heads."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)
    return angles.cos().to(dtype)[None, :, None, :], angles.sin().to(dtype)[None, :, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + head_dim/2) of x [B, T, H, head_dim] by position-dependent angles."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


# Attention kernels. A query at position i sees the keys at positions j with i - window < j <= i:
# `window` counts the keys a query sees, itself included. FlashAttention-3 on Hopper in bf16; on other CUDA
# devices a window shorter than the sequence goes through FlexAttention, which skips the blocks outside the
# window instead of materialising a T x T mask; SDPA everywhere else.

@functools.cache
def _flash_attn_3():
    """The FlashAttention-3 module (`flash_attn_interface`, Hopper only) when installed, else None."""
    try:
        import flash_attn_interface  # optional dependency, so imported on first use
    except ImportError:
        return None
    return flash_attn_interface


def _can_use_fa3(q: torch.Tensor) -> bool:
    # FA3 has only bf16/fp16 Hopper kernels: fp32 and every other device go through SDPA.
    return (q.is_cuda and q.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(q.device)[0] == 9 and _flash_attn_3() is not None)


@functools.cache
def _compiled_flex_attention():
    # FlexAttention is a fused kernel only when compiled (eager it materialises the scores)
    return torch.compile(flex_attention, dynamic=False)


def _can_use_flex(q: torch.Tensor) -> bool:
    # CUDA only: torch's CPU FlexAttention has no backward, and CPU SDPA gains nothing from skipping blocks
    return q.is_cuda and flex_attention is not None


def _build_window_block_mask(T: int, window: int, device: str):
    def causal_window(batch, head, q_pos, k_pos):
        return (q_pos >= k_pos) & (q_pos - k_pos < window)
    return create_block_mask(causal_window, None, None, T, T, device=device)


_cached_window_block_mask = functools.lru_cache(maxsize=32)(_build_window_block_mask)


def window_block_mask(T: int, window: int, device):
    """FlexAttention's BlockMask for causal attention within `window` over T positions, built once per shape."""
    if torch.compiler.is_compiling():  # Dynamo traces through caches: the mask's few ops join the graph
        return _build_window_block_mask(T, window, str(device))
    return _cached_window_block_mask(T, window, str(device))


def flex_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: float):
    """q [B, H, T, D], k and v [B, H_kv, T, D] at positions 0..T-1; each query sees its `window` latest keys."""
    block_mask = window_block_mask(q.size(2), window, q.device)
    # inside a compiled model the enclosing compile fuses it; called eagerly it needs its own
    kernel = flex_attention if torch.compiler.is_compiling() else _compiled_flex_attention()
    return kernel(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=q.size(1) != k.size(1))


def window_mask(q_start: int, q_len: int, k_start: int, k_len: int, window: int, device) -> torch.Tensor:
    """Boolean [q_len, k_len] mask, True where the query may attend to the key."""
    q_pos = torch.arange(q_start, q_start + q_len, device=device)[:, None]
    k_pos = torch.arange(k_start, k_start + k_len, device=device)[None, :]
    distance = q_pos - k_pos
    return (distance >= 0) & (distance < window)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     window: int, q_start: int, scale: float) -> torch.Tensor:
    """q [B, H, T, D] for positions q_start.., k and v [B, H_kv, q_start + T, D] from position 0; returns [B, H, T, D].

    H may be a multiple of H_kv (grouped-query attention).
    """
    T = q.size(2)
    first_key = max(0, q_start - window + 1)  # keys before it are outside every query's window
    k, v = k[:, :, first_key:], v[:, :, first_key:]
    L = k.size(2)
    if q_start == 0 and _can_use_fa3(q):
        left = window - 1 if window < T else -1  # -1: no window, the plain causal kernel
        out = _flash_attn_3().flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              softmax_scale=scale, causal=True, window_size=(left, 0))
        out = out[0] if isinstance(out, tuple) else out  # some FA3 releases also return the log-sum-exp
        return out.transpose(1, 2)
    if q_start == 0 and window < T and _can_use_flex(q):
        return flex_window_attention(q, k, v, window, scale)
    # one query sees every key left after the cut; T queries over T keys inside the window are plain causal
    # (branched on, so that a compile with a dynamic length passes SDPA a bool, not a symbolic one: a graph break)
    is_causal = True if T > 1 and L == T and window >= T else False  # noqa: SIM210
    mask = None if T == 1 or is_causal else window_mask(q_start, T, first_key, L, window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=q.size(1) != k.size(1))


def ragged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     window: int, q_pos: torch.Tensor, scale: float) -> torch.Tensor:
    """One query per row, row b at its own position q_pos[b] (continuous batching: each row another request);
    q [B, H, 1, D], k and v [B, H_kv, L, D] from position 0 (a row's keys past its position are masked out)."""
    first_key = max(0, int(q_pos.min()) - window + 1)  # keys before it are outside every row's window
    k, v = k[:, :, first_key:], v[:, :, first_key:]
    distance = q_pos[:, None] - torch.arange(first_key, first_key + k.size(2), device=q.device)[None, :]
    mask = ((distance >= 0) & (distance < window))[:, None, None, :]  # [B, 1, 1, L]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.size(1) != k.size(1))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int, window: int):
        super().__init__()
        self.layer, self.window = layer, window
        self.n_heads, self.kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        width, kv_width = config.width, config.kv_heads * config.head_dim
        self.c_q = Linear(width, config.n_heads * config.head_dim)
        self.c_k = Linear(width, kv_width)
        self.c_v = Linear(width, kv_width)
        self.c_proj = Linear(width, width)
        self.ve_gate = Linear(VE_GATE_CHANNELS, config.kv_heads) if config.has_value_embedding(layer) else None
        # QK-norm makes q and k unit-RMS; scaling both by QK_SCALE scales their dot product by its square
        self.scale = QK_SCALE ** 2 / math.sqrt(config.head_dim)

    def forward(self, x, value_embed, cos, sin, kv_cache: KVCache | None):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_heads, self.head_dim)
        k = self.c_k(x).view(B, T, self.kv_heads, self.head_dim)
        v = self.c_v(x).view(B, T, self.kv_heads, self.head_dim)
        if value_embed is not None:
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # [B, T, kv_heads], in (0, 3)
            v = v + gate.unsqueeze(-1) * value_embed.view(B, T, self.kv_heads, self.head_dim)
        q = apply_rotary(norm(q), cos, sin).transpose(1, 2)  # [B, H, T, hd] for attention
        k = apply_rotary(norm(k), cos, sin).transpose(1, 2)
        v = v.transpose(1, 2)
        q_start = 0
        if kv_cache is not None:
            q_start = kv_cache.start(B)  # None when the rows are at different positions
            k, v = kv_cache.store(self.layer, k, v)
        if q_start is None:
            y = ragged_attention(q, k, v, self.window, kv_cache.positions(B), self.scale)
        else:
            y = causal_attention(q, k, v, self.window, q_start, self.scale)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.width, 4 * config.width)
        self.c_proj = Linear(4 * config.width, config.width)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU², better than SwiGLU at GPT-2 scale (nanochat dev/LOG.md 2026-02-05)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int, window: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer, window)
        self.mlp = MLP(config)

    def forward(self, x, value_embed, cos, sin, kv_cache):
        x = x + self.attn(norm(x), value_embed, cos, sin, kv_cache)
        return x + self.mlp(norm(x))


def _row_chunks(n_rows: int, n_cols: int, device: torch.device) -> list[slice]:
    # an eager CPU works through cache-sized chunks; a GPU takes all rows at once (one launch per op), and so
    # does a compiled graph, which fuses the passes itself and would only unroll the loop
    chunked = device.type == "cpu" and not torch.compiler.is_compiling()
    step = max(1, CPU_CHUNK_ELEMENTS // n_cols) if chunked else n_rows
    return [slice(i, i + step) for i in range(0, n_rows, step)]


class SoftcappedCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy (0 where the target is -1) of softcap·tanh(logits/softcap), fused by hand.

    Left to autograd, the soft-cap and the loss make a dozen passes over the [N, vocab] logits and allocate
    four more tensors of that size, which costs as much as the lm_head matmul on CPU. Here the only such
    tensor holds tanh(logits/softcap), and the backward writes the gradient over it.
    """

    @staticmethod
    def forward(ctx, logits, targets, softcap):
        capped = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
        lse = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)
        for rows in _row_chunks(*logits.shape, logits.device):
            t = torch.div(logits[rows], softcap, out=capped[rows]).tanh_()
            lse[rows] = torch.logsumexp(t * softcap, dim=-1)
        valid = targets != -1
        safe_targets = targets.clamp(min=0)
        target_logits = capped.gather(1, safe_targets[:, None]).squeeze(1) * softcap
        ctx.save_for_backward(capped, lse, safe_targets, valid)
        ctx.softcap = softcap
        return (lse - target_logits) * valid

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        capped, lse, safe_targets, valid = ctx.saved_tensors
        row_scale = (grad_loss * valid)[:, None]
        for rows in _row_chunks(*capped.shape, capped.device):
            t = capped[rows]
            grad = (t * ctx.softcap).sub_(lse[rows, None]).exp_()  # softmax of the capped logits
            grad.scatter_add_(1, safe_targets[rows, None], grad.new_full((grad.size(0), 1), -1.0))
            grad.mul_(row_scale[rows])
            t.square_().sub_(1).mul_(grad).neg_()  # times d(softcap·tanh(x/softcap))/dx = 1 - tanh²
        return capped, None, None


INFERENCE_HEAD_MAX_ROWS = 128  # a decode batch's rows at most; beyond, x·Wᵀ (see GPT._inference_head)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config, self.compute_dtype = config, compute_dtype
        # embeddings are stored in the compute dtype, except fp32 under fp16 (whose range is too small for them)
        embed_dtype = torch.float32 if compute_dtype == torch.float16 else compute_dtype
        vocab, width, kv_width = config.padded_vocab_size, config.width, config.kv_heads * config.head_dim
        self.wte = nn.Embedding(vocab, width, dtype=embed_dtype)
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(vocab, kv_width, dtype=embed_dtype)
            for i in range(config.n_layers) if config.has_value_embedding(i)})
        self.blocks = nn.ModuleList(Block(config, i, window) for i, window in enumerate(config.window_sizes()))
        self.lm_head = Linear(width, vocab)
        self.resid_lambdas = nn.Parameter(torch.empty(config.n_layers))
        self.x0_lambdas = nn.Parameter(torch.empty(config.n_layers))
        # the extras exist only when on, so a model without them has today's parameters and RNG draws
        self.smear_gate = Linear(SMEAR_GATE_CHANNELS, 1) if config.smear else None
        self.smear_lambda = nn.Parameter(torch.empty(1)) if config.smear else None
        self.backout_lambda = nn.Parameter(torch.empty(1)) if config.backout else None
        cos, sin = self._rotary_tables()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _rotary_tables(self, device=None):
        cfg = self.config
        return rotary_tables(cfg.head_dim, ROTARY_MARGIN * cfg.max_seq_len, cfg.rope_base, self.compute_dtype, device)

    def _inference_head(self, x: torch.Tensor) -> torch.Tensor:
        """lm_head(x) without gradients. On a CPU, for the few rows of a prefill or a decode step, it is computed
        as W·xᵀ: MKL runs x·Wᵀ several times slower there (2 rows of a 32,768 × 256 head: 9.5 ms against 1.8 ms on
        a 2-core AMD EPYC, benchmarks/RESULTS.md); a single row goes as two, since one row takes the slow
        matrix-vector path in either form. Many rows (an evaluation's whole sequences) keep x·Wᵀ, whose logits
        come out row-major for the reductions over the vocabulary that follow. Only fp32 has the slow path: bf16
        goes to oneDNN, which takes either form at the same speed."""
        rows = x.reshape(-1, x.size(-1))
        if x.device.type != "cpu" or x.dtype != torch.float32 or rows.size(0) > INFERENCE_HEAD_MAX_ROWS:
            return self.lm_head(x)
        weight = self.lm_head.weight  # fp32, as x
        columns = torch.cat([rows, rows]) if rows.size(0) == 1 else rows
        return (weight @ columns.t()).t()[:rows.size(0)].reshape(*x.shape[:-1], -1)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter and buffer in place (also after building on the meta device + `to_empty`)."""
        cfg = self.config
        for embedding in (self.wte, *self.value_embeds.values()):
            nn.init.normal_(embedding.weight, std=0.8)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        bound = math.sqrt(3 / cfg.width)  # uniform on ±bound has std 1/sqrt(fan_in)
        for block in self.blocks:
            attn, mlp = block.attn, block.mlp
            for linear in (attn.c_q, attn.c_k, attn.c_v):
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.uniform_(mlp.c_fc.weight, -0.4 * bound, 0.4 * bound)
            nn.init.zeros_(attn.c_proj.weight)  # each block starts as the identity
            nn.init.zeros_(mlp.c_proj.weight)
            if attn.ve_gate is not None:
                nn.init.uniform_(attn.ve_gate.weight, 0.0, 0.02)
        self.resid_lambdas.copy_(torch.linspace(1.15, 1.05, cfg.n_layers))
        self.x0_lambdas.copy_(torch.linspace(0.20, 0.05, cfg.n_layers))
        if self.smear_gate is not None:  # drawn last: every other weight matches the model without smear
            nn.init.uniform_(self.smear_gate.weight, 0.0, 0.02)
            self.smear_lambda.zero_()  # smear starts off and is learnt
        if self.backout_lambda is not None:
            self.backout_lambda.fill_(0.2)
        cos, sin = self._rotary_tables(self.cos.device)
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, loss_reduction: str = "mean", last_only: bool = False,
                row_lengths: list[int] | None = None, capped: bool = True) -> torch.Tensor:
        """Logits [B, T, vocab_size] in fp32, or the cross-entropy against `targets` (ignoring -1).

        `last_only`: the last position's logits only, [B, 1, vocab_size]: a prefill needs no more, and at a
        small width the vocabulary projection is most of a forward's FLOPs.
        `row_lengths` (a prefill into an empty cache): the rows are prompts right-padded to T, row r's own
        tokens being its first row_lengths[r]. Attention is causal, so no position of a prompt sees the padding
        after it: each row's cache (trimmed to its length), kept embedding and last logits are its own.
        `capped=False` (inference): the logits before the soft-cap. The cap is monotone, so a greedy pick (their
        argmax) needs none of it, and a sampler caps only the rows it samples (`soft_cap`): on a CPU, capping a
        32-row decode step's logits took a tenth of the step."""
        B, T = idx.shape
        start = kv_cache.start(B) if kv_cache is not None else 0  # None: each row at its own position
        end = (start if start is not None else max(kv_cache.lengths[:B])) + T
        if end > self.cos.size(1):
            raise ValueError(f"position {end} is past the rotary tables ({self.cos.size(1)} positions)")
        if start is not None:
            cos, sin = self.cos[:, start:start + T], self.sin[:, start:start + T]
        else:  # continuous batching: one new token per row, rotated by that row's position
            positions = kv_cache.positions(B)[:, None]  # [B, 1]
            cos, sin = self.cos[0, positions], self.sin[0, positions]  # [B, 1, 1, head_dim/2]
        last = None
        if row_lengths is not None:
            if start != 0:
                raise ValueError("row_lengths describes right-padded prompts prefilled into an empty cache")
            last = torch.tensor(row_lengths, device=idx.device) - 1
        x = norm(self.wte(idx).to(self.compute_dtype))
        if self.smear_gate is not None:
            x = self.smear(x, kv_cache, last)
        x0, x_mid = x, None
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            value_embed = None
            if str(i) in self.value_embeds:
                value_embed = self.value_embeds[str(i)](idx).to(self.compute_dtype)
            x = block(x, value_embed, cos, sin, kv_cache)
            if i == self.config.n_layers // 2:
                x_mid = x
        if kv_cache is not None:
            kv_cache.advance(T, B)
            if row_lengths is not None:
                kv_cache.trim(row_lengths)
        if self.backout_lambda is not None:  # take back the mid-network features the logits do not need
            x = x - self.backout_lambda.to(x.dtype) * x_mid
        if last_only:
            if targets is not None:
                raise ValueError("last_only gives logits; it cannot be combined with targets")
            x, T = (x[:, -1:] if last is None else x[torch.arange(B, device=x.device), last][:, None]), 1
        head = self.lm_head if targets is not None or torch.is_grad_enabled() else self._inference_head
        logits = head(norm(x))[..., :self.config.vocab_size].float()  # padded vocab rows dropped
        softcap = self.config.softcap
        if targets is None:
            if not capped:
                return logits
            if torch.is_grad_enabled():
                return soft_cap(logits, softcap)
            return logits.div_(softcap).tanh_().mul_(softcap)  # in place: the logits are this call's own
        if loss_reduction not in ("mean", "none"):
            raise ValueError(f"loss_reduction must be 'mean' or 'none', got {loss_reduction!r}")
        targets = targets.reshape(-1)
        nats = SoftcappedCrossEntropy.apply(logits.view(B * T, -1), targets, softcap)
        return nats.view(B, T) if loss_reduction == "none" else nats.sum() / (targets != -1).sum()

    def smear(self, x: torch.Tensor, kv_cache: KVCache | None, last: torch.Tensor | None = None) -> torch.Tensor:
        """x_t + λ·σ(w·x_t[:24])·x_{t-1} on the normed embeddings x [B, T, width] (nanochat gpt.py: a cheap bigram).
        Position 0 has no previous token; with a cache, a chunk's first previous token is the one the cache kept,
        and the cache keeps each row's embedding at `last` (its last position by default)."""
        B, _, width = x.shape
        first = x.new_zeros(B, 1, width) if kv_cache is None else kv_cache.previous_embedding(B)
        previous = torch.cat((first, x[:, :-1]), dim=1)  # a copy, so the cache may now keep this chunk's last
        if kv_cache is not None:
            kv_cache.keep_embedding(x[:, -1] if last is None else x[torch.arange(B, device=x.device), last])
        gate = self.smear_lambda.to(x.dtype) * torch.sigmoid(self.smear_gate(x[..., :SMEAR_GATE_CHANNELS]))
        return x + gate * previous

    def for_inference(self) -> GPT:
        """This model in eval mode, without gradients, its matrices stored in the compute dtype.

        Training keeps fp32 master weights for the optimizer, and `Linear` casts them to the compute dtype on each
        forward. A model that only infers would pay that cast on every decode step: under bf16 it reads 4 bytes a
        weight, writes 2 and reads those 2 again, where 2 are needed (on a CPU the casts were a third of a batch-1
        step, benchmarks/RESULTS.md). Casting once gives the same weights bit for bit, so the logits do not change."""
        self.requires_grad_(False)
        for module in self.modules():
            if isinstance(module, Linear):
                module.weight.data = module.weight.data.to(self.compute_dtype)
        return self.eval()

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The optimizer's groups (ARCHITECTURE.md); every parameter is in exactly one."""
        return {
            "matrix": [p for block in self.blocks for p in block.parameters()],
            "embedding": [self.wte.weight],
            "value_embedding": list(self.value_embeds.parameters()),
            "lm_head": [self.lm_head.weight],
            "resid_lambda": [self.resid_lambdas],
            "x0_lambda": [self.x0_lambdas],
            "smear_backout": self._smear_backout_params(),
        }

    def _smear_backout_params(self) -> list[nn.Parameter]:
        smear = [self.smear_gate.weight, self.smear_lambda] if self.smear_gate is not None else []
        return smear + ([self.backout_lambda] if self.backout_lambda is not None else [])

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate_greedy(self, idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """Append `num_tokens` argmax tokens to idx [B, T], recomputing the whole sequence each step (for tests)."""
        for _ in range(num_tokens):
            next_token = self(idx)[:, -1].argmax(dim=-1, keepdim=True)
            idx = torch.cat((idx, next_token), dim=1)
        return idx
