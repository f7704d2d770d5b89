"""The memory model behind `--device-batch-size auto` and `picochat plan --memory`, and the fit itself."""
from __future__ import annotations

import json

import pytest
import torch

import picochat.train.fit_batch as fit_batch
import picochat.train.loop as loop
from picochat.cli import main
from picochat.errors import PicochatError
from picochat.model.config import GPTConfig
from picochat.model.gpt import GPT
from picochat.runtime import Runtime
from picochat.train import pretrain
from picochat.train.fit_batch import largest_that_fits, out_of_memory_advice
from picochat.train.memory import (HEADROOM, estimate_memory, fit_by_memory_model, saved_bytes_per_token,
                                   weight_casts)
from picochat.train.setup import prepare_run
from test_train import tiny_config, tiny_home  # noqa: F401  (the module's dataset and tokenizer)

SHAPE = GPTConfig(depth=4, vocab_size=4096, aspect_ratio=32, head_dim=16, max_seq_len=64, window_pattern="SL")


def autograd_saved_bytes(config: GPTConfig, dtype: torch.dtype, rows: int, seq_len: int) -> int:
    """Bytes of the distinct tensors autograd saves for the backward, parameters and buffers left out."""
    torch.manual_seed(0)
    model = GPT(config, dtype)
    model.init_weights()
    owned = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved = {}

    def keep(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    idx = torch.randint(0, config.vocab_size, (rows, seq_len))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(idx, idx)
    return sum(n for ptr, n in saved.items() if ptr not in owned)


@pytest.mark.parametrize("config", [SHAPE, GPTConfig(depth=2, vocab_size=512, aspect_ratio=64, head_dim=32,
                                                     max_seq_len=64, window_pattern="L")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_activation_model_is_within_10_percent_of_what_autograd_saves(config, dtype):
    measured = autograd_saved_bytes(config, dtype, 4, 64)
    modelled = 4 * 64 * saved_bytes_per_token(config, dtype) + weight_casts(config, dtype)
    assert abs(modelled / measured - 1) < 0.10


def test_auto_picks_the_largest_divisor_that_fits_and_keeps_the_total_batch():
    rows = 8192 // 64  # 128 rows per step at T=64
    fits_32 = estimate_memory(SHAPE, 32, 64, torch.float32).total
    fits_64 = estimate_memory(SHAPE, 64, 64, torch.float32).total
    free = int((fits_32 + (fits_64 - fits_32) // 2) / HEADROOM)  # room for 32 rows, not for 64
    assert fit_by_memory_model(SHAPE, 8192, 64, torch.float32, 1, free) == 32 and rows % 32 == 0
    # 3 x 64 tokens per step: the micro-batch must divide 3 rows, so 2 is never chosen
    assert fit_by_memory_model(SHAPE, 192, 64, torch.float32, 1, free) == 3


def test_auto_refuses_when_even_one_row_does_not_fit():
    one_row = estimate_memory(SHAPE, 1, 64, torch.float32).total
    with pytest.raises(PicochatError, match="even 1 row of 64 tokens needs about .* lower --depth or --max-seq-len"):
        fit_by_memory_model(SHAPE, 8192, 64, torch.float32, 1, one_row // 2)


def test_the_probe_halves_on_out_of_memory_down_to_one_row():
    tried = []

    def fits(rows):
        tried.append(rows)
        return rows <= 5
    assert largest_that_fits([24, 12, 8, 6, 4, 3, 2, 1], fits) == 3 and tried == [24, 12, 6, 3]
    assert largest_that_fits([4, 2, 1], lambda rows: False) is None


def test_out_of_memory_mid_run_names_the_flag_and_the_value():
    assert "--device-batch-size 16; lower it to 8" in str(out_of_memory_advice(16, 7))
    assert "lower --max-seq-len" in str(out_of_memory_advice(1, 7))


def test_train_with_device_batch_size_auto_resolves_and_saves_a_number(tiny_home, monkeypatch):
    cfg = tiny_config(run="auto", device_batch_size=None, total_batch_size=512)  # 16 rows of 32 per step
    shape = GPTConfig(depth=2, vocab_size=300, aspect_ratio=32, head_dim=32, max_seq_len=32, window_pattern="L")
    room_for_4 = estimate_memory(shape, 4, 32, torch.float32).total
    monkeypatch.setattr(fit_batch, "available_memory", lambda device: int(room_for_4 / HEADROOM) + 1)
    setup = prepare_run(cfg, None, Runtime(torch.device("cpu"), torch.float32))
    assert setup.cfg.device_batch_size == 4 and setup.grad_accum_steps * 4 * 32 == 512
    saved = json.loads((setup.run_dir / "config.json").read_text())
    assert saved["device_batch_size"] == 4


def test_plan_memory_prints_the_breakdown_and_the_fit(capsys):
    assert main(["plan", "--depth", "4", "--memory", "--memory-gib", "8", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    for part in ("weights", "gradients", "optimizer", "activations", "total", "largest micro-batch in 8 GiB"):
        assert part in out
    assert main(["plan", "--depth", "12", "--memory", "--memory-gib", "0.5"]) == 0
    assert "even 1 row" in capsys.readouterr().out


def test_device_batch_size_takes_a_number_or_auto(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--device-batch-size", "many"])
    assert exit_info.value.code == 2 and "expected an integer or auto, got 'many'" in capsys.readouterr().err


def test_out_of_memory_in_a_step_is_a_one_line_error_naming_the_flag(tiny_home, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(loop, "train_step", out_of_memory)
    with pytest.raises(PicochatError, match="out of device memory at step 1 with --device-batch-size 4; lower it to 2"):
        pretrain.train(tiny_config(run="oom", num_iterations=2, eval_every=0, save_every=0))
