"""picochat's GPT for Hugging Face transformers, written into every `picochat export` folder.

A standalone copy of the forward pass in picochat/model/gpt.py (it imports nothing from picochat, so it
loads where picochat is not installed): token embedding and parameter-free RMSNorm, per layer a residual
scalar and an x0 scalar, attention with QK-norm, rotary embeddings, grouped-query heads, a sliding window
and, on alternating layers, a gated value embedding, a ReLU² MLP, then an untied lm_head whose logits are
soft-capped in fp32. The weights keep picochat's names, so the state dict is picochat's own.

Positions: a token's position is its index among the row's unmasked tokens, so a left-padded batch computes
what each prompt alone would. The cache is transformers' own (the default DynamicCache keeps every key);
the sliding windows are applied by the attention mask, in prefill and in decode alike.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_picochat import PicochatConfig

# transformers 5 renamed the output's (and forward's) `past_key_values` to `cache`; answer in the installed name
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def norm(x):
    """Parameter-free RMSNorm over the last dimension (torch's default epsilon)."""
    return F.rms_norm(x, (x.size(-1),))


def rotary(positions, head_dim, base, dtype):
    """cos and sin [B, T, 1, head_dim/2] for integer positions [B, T]."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    angles = positions.float()[..., None] * inv_freq
    return angles.cos().to(dtype)[:, :, None, :], angles.sin().to(dtype)[:, :, None, :]


def apply_rotary(x, cos, sin):
    """Rotate channel pairs (i, i + head_dim/2) of x [B, T, H, head_dim]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def token_positions(attention_mask, batch, past, length, device):
    """Positions of the keys [B, past + length] and whether each key is a real token (not padding)."""
    total = past + length
    if attention_mask is None:
        return torch.arange(total, device=device).expand(batch, total), torch.ones(batch, total, dtype=torch.bool,
                                                                                  device=device)
    if attention_mask.dim() != 2 or attention_mask.size(1) != total:
        raise ValueError(f"attention_mask must be [batch, {total}] (cached + new tokens), "
                         f"got {tuple(attention_mask.shape)}")
    real = attention_mask.bool()
    return (real.long().cumsum(dim=1) - 1).clamp(min=0), real


def window_masks(key_positions, real, length, windows):
    """Per window size, a boolean [B, 1, length, keys] mask: a query sees keys at distance 0 .. window - 1."""
    query_positions = key_positions[:, -length:]
    distance = query_positions[:, :, None] - key_positions[:, None, :]
    causal = (distance >= 0) & real[:, None, :]
    keys = key_positions.size(1)
    # a padding query sees itself, so its softmax has one term and no NaN reaches the real rows
    itself = torch.arange(keys - length, keys, device=real.device)[:, None] == torch.arange(keys, device=real.device)
    return {w: ((causal & (distance < w)) | itself)[:, None] for w in set(windows)}


class PicochatAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.layer, self.window = layer, config.window_sizes[layer]
        self.n_heads, self.kv_heads, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                      config.head_dim)
        self.gate_channels, self.gate_scale = config.ve_gate_channels, config.ve_gate_scale
        width, kv_width = config.hidden_size, config.num_key_value_heads * config.head_dim
        self.c_q = nn.Linear(width, self.n_heads * self.head_dim, bias=False)
        self.c_k = nn.Linear(width, kv_width, bias=False)
        self.c_v = nn.Linear(width, kv_width, bias=False)
        self.c_proj = nn.Linear(width, width, bias=False)
        has_ve = layer in config.value_embedding_layers
        self.ve_gate = nn.Linear(self.gate_channels, self.kv_heads, bias=False) if has_ve else None
        # unit-RMS q and k, each times qk_scale: their dot product is scaled by its square
        self.scale = config.qk_scale ** 2 / self.head_dim ** 0.5

    def forward(self, x, value_embed, cos, sin, mask, cache):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_heads, self.head_dim)
        k = self.c_k(x).view(B, T, self.kv_heads, self.head_dim)
        v = self.c_v(x).view(B, T, self.kv_heads, self.head_dim)
        if value_embed is not None:
            gate = self.gate_scale * torch.sigmoid(self.ve_gate(x[..., :self.gate_channels]))
            v = v + gate.unsqueeze(-1) * value_embed.view(B, T, self.kv_heads, self.head_dim)
        q = apply_rotary(norm(q), cos, sin).transpose(1, 2)
        k = apply_rotary(norm(k), cos, sin).transpose(1, 2)
        v = v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, self.layer)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                           enable_gqa=self.n_heads != self.kv_heads)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


class PicochatMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.c_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class PicochatBlock(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.attn = PicochatAttention(config, layer)
        self.mlp = PicochatMLP(config)

    def forward(self, x, value_embed, cos, sin, mask, cache):
        x = x + self.attn(norm(x), value_embed, cos, sin, mask, cache)
        return x + self.mlp(norm(x))


class PicochatPreTrainedModel(PreTrainedModel):
    config_class = PicochatConfig
    base_model_prefix = "picochat"
    _no_split_modules = ["PicochatBlock"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        """A fresh model (from a config, not from an export): small random weights, picochat's starting scalars."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.normal_(std=0.02)
        elif isinstance(module, PicochatForCausalLM):
            module.resid_lambdas.fill_(1.0)
            module.x0_lambdas.fill_(0.1)


class PicochatForCausalLM(PicochatPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        vocab, width = config.padded_vocab_size, config.hidden_size
        kv_width = config.num_key_value_heads * config.head_dim
        self.wte = nn.Embedding(vocab, width)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(vocab, kv_width)
                                           for i in config.value_embedding_layers})
        self.blocks = nn.ModuleList(PicochatBlock(config, i) for i in range(config.num_hidden_layers))
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(config.num_hidden_layers))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.num_hidden_layers))
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("picochat looks its value embeddings up by token id: pass input_ids, not inputs_embeds")
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        B, T = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        key_positions, real = token_positions(attention_mask, B, past, T, input_ids.device)
        masks = window_masks(key_positions, real, T, self.config.window_sizes)
        dtype = self.wte.weight.dtype
        cos, sin = rotary(key_positions[:, -T:], self.config.head_dim, self.config.rope_base, dtype)
        x = x0 = norm(self.wte(input_ids))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            value_embed = self.value_embeds[str(i)](input_ids) if str(i) in self.value_embeds else None
            x = block(x, value_embed, cos, sin, masks[block.attn.window], cache if use_cache else None)
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) and logits_to_keep else slice(None)
        logits = self.lm_head(norm(x[:, kept]))[..., :self.config.vocab_size].float()
        logits = torch.tanh(logits / self.config.softcap) * self.config.softcap
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs, shifted here; -100 is ignored
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache if use_cache else None})
