"""torch.compile on CPU (Inductor): the model's forward is one graph in training, evaluation and KV-cache
decoding; compiled training follows eager; changing schedules never recompile.

Compiling is slow on 2 cores, so the model is one layer and the compiling tests are marked slow. Training
compiles with dynamic=False, as picochat/train/loop.py does. Decoding compiles with dynamic=None: each
step's position comes from the cache's lengths, and with dynamic=False Dynamo specialises on it and compiles
a graph per position; with dynamic=None the position becomes symbolic after the first recompile.
"""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from picochat.model.config import GPTConfig
from picochat.model.gpt import GPT
from picochat.model.kv_cache import KVCache
from picochat.optim import build_optimizer
from picochat.optim.setup import OptimHParams
from picochat.train.schedule import apply_schedules
from picochat.train.step import GradScaler, train_step

SHAPE = GPTConfig(depth=1, vocab_size=256, aspect_ratio=32, head_dim=16, max_seq_len=32, window_pattern="L")
# fp32: compiled and eager sum in different orders (1 ulp, 5e-7, at step 1), and Muon's orthogonalisation
# amplifies that about 5x per step: measured 5.4e-5 at step 5, so 1e-3 leaves a 20x margin
LOSS_TOLERANCE = 1e-3


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def build() -> GPT:
    torch.manual_seed(0)
    model = GPT(SHAPE)
    model.init_weights()
    return model


def train_losses(compiled: bool, steps: int) -> tuple[list[float], list[tuple]]:
    """Losses and the (lr, weight decay, momentum) of the Muon group at each step, schedules applied."""
    model = build()
    optimizer = build_optimizer(model.param_groups(), OptimHParams(weight_decay=0.1), SHAPE.width, torch.float32)
    trained = torch.compile(model, dynamic=False) if compiled else model
    data = torch.randint(0, SHAPE.vocab_size, (steps, 4, 33), generator=torch.Generator().manual_seed(1))
    losses, schedules = [], []
    for step in range(steps):
        apply_schedules(optimizer, step, steps, 3, 0.5, 0.1)
        muon = next(g for g in optimizer.param_groups if g.get("kind") == "muon")
        schedules.append((float(muon["lr"]), muon["weight_decay"], muon["momentum"]))
        batch = iter([(data[step, :, :-1], data[step, :, 1:])])
        losses.append(train_step(trained, optimizer, batch, 1, GradScaler(False)).loss)
    return losses, schedules


def test_the_model_forward_has_no_graph_break_in_training_evaluation_or_decoding():
    model = build().eval()
    idx = torch.randint(0, SHAPE.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    cache = KVCache(SHAPE, 2, 24)
    with torch.no_grad():
        model(idx[:, :8], kv_cache=cache)
        explained = [torch._dynamo.explain(model)(idx[:, 8:9], kv_cache=cache), torch._dynamo.explain(model)(idx)]
    explained.append(torch._dynamo.explain(model.train())(idx, idx))
    for explanation in explained:
        assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


@pytest.mark.slow
def test_compiled_training_follows_eager_and_changing_schedules_never_recompile():
    eager, schedules = train_losses(compiled=False, steps=20)
    counters.clear()
    compiled, _ = train_losses(compiled=True, steps=20)
    assert len(set(schedules)) == 20  # LR, weight decay and momentum moved at every step
    assert max(abs(a - b) for a, b in zip(eager[:5], compiled[:5])) < LOSS_TOLERANCE
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


@pytest.mark.slow
def test_compiled_evaluation_and_decoding_match_eager_without_a_graph_per_position():
    model = build().eval()
    compiled = torch.compile(model, dynamic=None)
    prompt = torch.randint(0, SHAPE.vocab_size, (2, 8), generator=torch.Generator().manual_seed(3))
    full = torch.randint(0, SHAPE.vocab_size, (2, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(compiled(full), model(full), atol=1e-5, rtol=0)
        tokens = {}
        for name, forward in (("eager", model), ("compiled", compiled)):
            cache, ids = KVCache(SHAPE, 2, 24), prompt
            logits = forward(ids, kv_cache=cache)
            out = []
            for _ in range(10):
                ids = logits[:, -1].argmax(dim=-1, keepdim=True)
                out.append(ids)
                logits = forward(ids, kv_cache=cache)
            tokens[name] = torch.cat(out, dim=1)
    assert torch.equal(tokens["compiled"], tokens["eager"])
    assert counters["stats"]["unique_graphs"] <= 3  # evaluation, prefill, decode: not one per position


def test_a_cpu_run_compiles_by_default_only_when_long_enough_to_pay_for_the_compile(monkeypatch):
    from picochat.train import build
    from picochat.train.build import ASSUMED_CPU_MFU, CPU_COMPILE_MIN_SECONDS, default_compile
    peak = 1.5e11
    ten_minutes = CPU_COMPILE_MIN_SECONDS * peak * ASSUMED_CPU_MFU  # FLOPs that train for the threshold
    assert default_compile("cpu", 1.01 * ten_minutes, peak) is True
    assert default_compile("cpu", 0.99 * ten_minutes, peak) is False
    assert default_compile("cuda", 1.0, None) is True  # always on a GPU
    assert default_compile("mps", 1e20, 1e12) is False  # Inductor's MPS backend is not what picochat trains with
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    assert default_compile("cpu", 1e20, peak) is False  # no C++ compiler: Inductor could not build CPU kernels


def test_train_resolves_compile_from_the_run_length_on_a_cpu(home):
    from types import SimpleNamespace

    from picochat.runtime import init_runtime
    from picochat.scaling import make_plan
    from picochat.train.config import TrainConfig
    from picochat.train.setup import resolve
    runtime, tokenizer = init_runtime("cpu"), SimpleNamespace(name="t")

    def resolved(**flags) -> bool:
        cfg = TrainConfig(dataset="d", depth=4, **flags)
        plan = make_plan(cfg.depth, 32768, cfg.aspect_ratio, cfg.head_dim, cfg.max_seq_len, cfg.window_pattern,
                         cfg.ratio, cfg.total_batch_size, cfg.num_iterations)
        return resolve(cfg, plan, tokenizer, runtime).compile

    short = {"num_iterations": 3, "total_batch_size": 4096, "max_seq_len": 512}  # ~1e12 FLOPs: seconds
    assert resolved(**short) is False  # the compile would never pay back
    assert resolved() is True  # the scaling law's d4 horizon: hours on a CPU
    assert resolved(**short, compile=True) is True  # a flag always wins
    assert resolved(compile=False) is False
