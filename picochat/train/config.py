"""TrainConfig: every knob of `picochat train`, one CLI flag per field.

A field left None is derived: from the scaling-law plan (horizon, batch, learning rates,
weight decay), from the dataset (tokenizer) or from the device (compile). `resolve` fills
them in, and the resolved config is what is printed and saved with the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from picochat.config import field_help, int_or_auto



@dataclass
class TrainConfig:
    # What to train on, and where the run lives.
    dataset: str = field(default="pystdlib", metadata=field_help("dataset name under $PICOCHAT_HOME/datasets"))
    tokenizer: str | None = field(default=None, metadata=field_help("trained tokenizer name; derived: the one trained on the dataset"))
    run: str | None = field(default=None, metadata=field_help("run name: $PICOCHAT_HOME/runs/RUN; derived: d{depth}-{dataset}"))
    # Model shape (picochat/model/config.py).
    depth: int = field(default=12, metadata=field_help("number of transformer layers; every other size follows"))
    aspect_ratio: int = field(default=64, metadata=field_help("width = depth x aspect ratio, rounded up to a head_dim multiple"))
    head_dim: int = field(default=128, metadata=field_help("attention head dimension"))
    n_kv_heads: int | None = field(default=None, metadata=field_help("grouped-query attention kv heads; derived: n_heads"))
    window_pattern: str = field(default="SSSL", metadata=field_help("attention windows tiled over layers: L full, S half"))
    max_seq_len: int = field(default=2048, metadata=field_help("tokens per sequence"))
    smear: bool = field(default=False, metadata=field_help("mix a gated copy of the previous token's embedding into each position"))
    backout: bool = field(default=False, metadata=field_help("subtract λ x the residual after layer n/2 before the final norm"))
    # Horizon and batch (None: from the scaling-law plan).
    num_iterations: int | None = field(default=None, metadata=field_help("optimizer steps; derived: tokens:params 10.5"))
    ratio: float | None = field(default=None, metadata=field_help("tokens per scaling param for the planned horizon"))
    target_flops: float | None = field(default=None, metadata=field_help(
        "the horizon from a FLOP budget: steps = F / (FLOPs per token x total batch); instead of --ratio/--num-iterations"))
    constants: str | None = field(default=None, metadata=field_help(
        "JSON file of fitted scaling constants (`picochat fit --write-constants`); derived: the published defaults"))
    total_batch_size: int | None = field(default=None, metadata=field_help("tokens per optimizer step, over all devices"))
    device_batch_size: int | None = field(default=32, metadata=field_help(
        "sequences per micro-batch per device (memory only); auto: the largest that fits", parse=int_or_auto,
        metavar="ROWS|auto"))
    # Optimizer (None: from the plan).
    matrix_lr: float | None = field(default=None, metadata=field_help("Muon LR for the block matrices"))
    embedding_lr: float | None = field(default=None, metadata=field_help("AdamW LR for the token embedding"))
    value_embedding_lr: float | None = field(default=None, metadata=field_help("AdamW LR for the value embeddings"))
    lm_head_lr: float | None = field(default=None, metadata=field_help("AdamW LR for the lm_head"))
    resid_lambda_lr: float | None = field(default=None, metadata=field_help("AdamW LR for the residual lambdas"))
    x0_lambda_lr: float | None = field(default=None, metadata=field_help("AdamW LR for the x0 lambdas"))
    weight_decay: float | None = field(default=None, metadata=field_help("Muon weight decay (∝ 1/width², nanochat dev/LOG.md)"))
    muon_eq: bool = field(default=False, metadata=field_help("MuonEq: equilibrate the momentum's rows before orthogonalising"))
    muon_plus: bool = field(default=False, metadata=field_help("Muon+: renormalise the orthogonal update to Frobenius norm √min(m, n)"))
    normuon: bool = field(default=False, metadata=field_help("NorMuon: normalise each neuron of the update by its running RMS"))
    warmup_steps: int | None = field(default=None, metadata=field_help("linear LR warm-up steps"))
    warmdown_ratio: float = field(default=0.65, metadata=field_help("fraction of steps in the final linear warm-down"))
    final_lr_frac: float = field(default=0.05, metadata=field_help("LR at the last step, as a fraction of the peak"))
    # Measurement, evaluation, checkpoints.
    eval_every: int = field(default=250, metadata=field_help("validation bpb every N steps (0: only at start and end)"))
    eval_tokens: int = field(default=2**20, metadata=field_help("validation tokens per evaluation"))
    sample_every: int = field(default=1000, metadata=field_help("print sampled continuations every N steps (0: never)"))
    save_every: int = field(default=1000, metadata=field_help("checkpoint every N steps (0: only at the end)"))
    keep_checkpoints: int = field(default=2, metadata=field_help("how many recent checkpoints to keep"))
    log_every: int = field(default=1, metadata=field_help("console progress line every N steps (the JSONL gets every step)"))
    core_every: int = field(default=0, metadata=field_help("CORE every N steps and at the end (0: never); needs the bundle"))
    core_max_per_task: int = field(default=500, metadata=field_help("items per CORE task during training"))
    core_bundle: str | None = field(default=None, metadata=field_help("CORE bundle dir; derived: $PICOCHAT_HOME/eval_bundle"))
    resume: bool = field(default=False, metadata=field_help("continue the run from its latest checkpoint"))
    force: bool = field(default=False, metadata=field_help("start over a run that has checkpoints, deleting them"))
    wandb: bool = field(default=False, metadata=field_help("also log to wandb (when installed)"))
    # Runtime.
    device: str | None = field(default=None, metadata=field_help("cuda, mps or cpu; derived: autodetect"))
    dtype: str | None = field(default=None, metadata=field_help("compute dtype; derived: bf16 on SM80+, else fp32",
                                                           choices=["float32", "bfloat16", "float16"]))
    compile: bool | None = field(default=None, metadata=field_help("torch.compile the model; derived: on for CUDA, on a CPU for runs estimated at 10+ minutes"))
    fp8: bool = field(default=False, metadata=field_help("FP8 matmuls on Hopper (needs torchao and --compile)"))
    seed: int = field(default=42, metadata=field_help("random seed (model init)"))
    loader_mode: str = field(default="bestfit", metadata=field_help("document packing", choices=["bestfit", "greedy"]))
    loader_buffer_docs: int = field(default=1000, metadata=field_help("documents buffered for best-fit packing"))

    def run_name(self) -> str:
        return self.run or f"d{self.depth}-{self.dataset}"


# The fields that fix the model's shape: a resume must not change them.
SHAPE_FIELDS = ("depth", "aspect_ratio", "head_dim", "n_kv_heads", "window_pattern", "max_seq_len", "smear", "backout")
# Plan learning-rate group -> TrainConfig field.
LR_FIELDS = {"matrix": "matrix_lr", "embedding": "embedding_lr", "value_embedding": "value_embedding_lr",
             "lm_head": "lm_head_lr", "resid_lambda": "resid_lambda_lr", "x0_lambda": "x0_lambda_lr"}
