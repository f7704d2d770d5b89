"""The configuration of a picochat model exported for Hugging Face transformers (written by `picochat export`).

Every shape field and constant of picochat's GPT is recorded here, so modeling_picochat.py needs nothing else.
Field names follow transformers' conventions where one exists (hidden_size, num_hidden_layers, ...).
"""
from transformers import PretrainedConfig


class PicochatConfig(PretrainedConfig):
    model_type = "picochat"

    def __init__(self, vocab_size=32768, padded_vocab_size=32768, hidden_size=768, intermediate_size=3072,
                 num_hidden_layers=12, num_attention_heads=6, num_key_value_heads=6, head_dim=128,
                 max_position_embeddings=2048, window_pattern="SSSL", window_sizes=None,
                 value_embedding_layers=None, softcap=15.0, rope_base=100_000.0, qk_scale=1.2,
                 ve_gate_channels=12, ve_gate_scale=3.0, use_cache=True, tie_word_embeddings=False, **kwargs):
        self.vocab_size = vocab_size
        self.padded_vocab_size = padded_vocab_size  # embedding and lm_head rows (vocab rounded up to 64)
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size  # the ReLU² MLP's hidden width, 4 x hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.max_position_embeddings = max_position_embeddings  # the training context
        self.window_pattern = window_pattern
        # keys a query sees per layer, itself included (L = the context, S = half of it; the last layer is L)
        self.window_sizes = list(window_sizes or [max_position_embeddings] * num_hidden_layers)
        # layers whose values get a gated value embedding (alternating, always including the last)
        self.value_embedding_layers = list(value_embedding_layers or [])
        self.softcap = softcap  # logits = softcap * tanh(logits / softcap), in fp32
        self.rope_base = rope_base
        self.qk_scale = qk_scale  # q and k are multiplied by it after their parameter-free RMSNorm
        self.ve_gate_channels = ve_gate_channels  # the value-embedding gate reads this many leading channels
        self.ve_gate_scale = ve_gate_scale  # gate = ve_gate_scale * sigmoid(...), in (0, ve_gate_scale)
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
