"""Causal attention with a sliding window: FlashAttention-3 on Hopper in bf16 when installed, PyTorch SDPA elsewhere.

Window semantics (shared by every path): a query at position i sees the keys at positions j with
i - window < j <= i, so `window` counts the keys a query sees, itself included.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache
def _flash_attn_3():
    """The FlashAttention-3 module (`flash_attn_interface`, Hopper only) when installed, else None."""
    try:
        import flash_attn_interface  # optional dependency, so imported on first use
    except ImportError:
        return None
    return flash_attn_interface


def _can_use_fa3(q: torch.Tensor) -> bool:
    # FA3 has only bf16/fp16 Hopper kernels (seed §7): fp32 and every other device go through SDPA.
    return (q.is_cuda and q.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(q.device)[0] == 9 and _flash_attn_3() is not None)


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
        out = _flash_attn_3().flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              softmax_scale=scale, causal=True, window_size=(window - 1, 0))
        out = out[0] if isinstance(out, tuple) else out  # some FA3 releases also return the log-sum-exp
        return out.transpose(1, 2)
    mask, is_causal = None, False
    if T == 1:
        pass  # one query: after the cut above it sees every key that is left
    elif L == T and window >= T:
        is_causal = True  # plain causal attention, the fast kernel
    else:
        mask = window_mask(q_start, T, first_key, L, window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=q.size(1) != k.size(1))
