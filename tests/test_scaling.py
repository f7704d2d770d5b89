"""The scaling laws and `picochat plan` reproduce nanochat's published tables (dev/LOG.md: tokens per depth, weight decay)."""
import json
import math

import pytest

from picochat.cli import main
from picochat.errors import PicochatError
from picochat.hardware import peak_flops
from picochat.model.accounting import flops_per_token, scaling_params
from picochat.model.config import GPTConfig, ModelConfigError
from picochat.scaling import (
    DEFAULT_LEARNING_RATES, ScalingConstants, fit_weight_decay_reference, learning_rates,
    load_constants, make_plan, optimal_batch_tokens, reference_tokens, steps_for_flops, target_tokens,
    weight_decay_for_width,
)


@pytest.mark.parametrize("depth", [8, 12, 20])
def test_target_tokens_are_ten_and_a_half_scaling_params(depth):
    plan = make_plan(depth)
    assert plan.scaling_params == scaling_params(GPTConfig(depth=depth))
    assert plan.target_tokens == int(10.5 * plan.scaling_params)
    assert plan.target_tokens - plan.total_batch_size < plan.tokens <= plan.target_tokens


def test_seed_token_counts():
    # nanochat's tokens per depth: d8 0.44B, d18 3.4B, d26 9.6B
    for depth, billions in ((8, 0.44), (18, 3.4), (26, 9.6)):
        assert make_plan(depth).target_tokens / 1e9 == pytest.approx(billions, abs=0.05)


@pytest.mark.parametrize("depth,log2_batch", [(8, 18)] + [(d, 19) for d in (12, 14, 16)] + [(d, 20) for d in (18, 20, 22, 24, 26)])
def test_batch_size_reproduces_seed_table(depth, log2_batch):
    assert make_plan(depth, vocab_size=32768).total_batch_size == 2**log2_batch


def test_batch_law_is_sublinear_power_of_two():
    reference = 1_000_000_000
    assert optimal_batch_tokens(reference, reference) == 2**19
    # 10x the tokens -> 10^0.383 = 2.42x the batch, rounded in log2 to 2x
    assert optimal_batch_tokens(10 * reference, reference) == 2**20
    assert optimal_batch_tokens(100 * reference, reference) == 2**19 * 2**round(2 * 0.383 * math.log2(10))


@pytest.mark.parametrize("depth,seed_wd", [(8, 0.40), (12, 0.22), (16, 0.10), (20, 0.08)])
def test_weight_decay_within_15_percent_of_seed(depth, seed_wd):
    assert make_plan(depth).weight_decay == pytest.approx(seed_wd, rel=0.15)


def test_weight_decay_is_inverse_square_in_width_with_settable_reference():
    assert weight_decay_for_width(768, wd_ref=0.3) == pytest.approx(0.3)
    assert weight_decay_for_width(1536, wd_ref=0.3) == pytest.approx(0.3 / 4)
    assert weight_decay_for_width(384, wd_ref=0.3, width_ref=384) == pytest.approx(0.3)


def test_weight_decay_fit_recovers_an_exact_power_law():
    points = {w: 0.25 * (768 / w) ** 2 for w in (256, 768, 2048)}
    assert fit_weight_decay_reference(points) == pytest.approx(0.25)
    assert fit_weight_decay_reference({512: 0.40, 768: 0.22, 1024: 0.10, 1280: 0.08}) == pytest.approx(0.198, abs=0.001)


def test_learning_rates_scale_with_width_and_batch():
    at_reference = learning_rates(768, 2**19)
    assert at_reference == pytest.approx(DEFAULT_LEARNING_RATES)
    wide = learning_rates(4 * 768, 2**19)
    assert wide["embedding"] == pytest.approx(0.3 / 2) and wide["lm_head"] == pytest.approx(0.008 / 2)
    assert wide["matrix"] == pytest.approx(0.02) and wide["x0_lambda"] == pytest.approx(0.5)
    big_batch = learning_rates(768, 2**21)
    assert all(big_batch[g] == pytest.approx(2 * at_reference[g]) for g in at_reference)


def test_plan_schedule_and_overrides():
    plan = make_plan(12)
    assert plan.num_steps == plan.target_tokens // plan.total_batch_size
    assert plan.warmup_steps == 40 and plan.warmdown_steps == round(0.65 * plan.num_steps)
    short = make_plan(12, total_batch_size=2**16, num_iterations=30)
    assert short.num_steps == 30 and short.tokens == 30 * 2**16 and short.warmup_steps == 30
    assert short.learning_rates["matrix"] == pytest.approx(0.02 * math.sqrt(2**16 / 2**19))
    assert make_plan(12, ratio=21).target_tokens == target_tokens(plan.scaling_params, 21)


def test_steps_for_a_flop_budget_round_to_the_nearest_step():
    assert steps_for_flops(1e12, flops_per_token=1_000_000, tokens_per_step=1000) == 1000
    assert steps_for_flops(1.4e9, 1_000_000, 1000) == 1 and steps_for_flops(1.6e9, 1_000_000, 1000) == 2
    assert steps_for_flops(2.49e12, 1_000_000, 1000) == 2490
    with pytest.raises(PicochatError, match="under half an optimizer step"):
        steps_for_flops(0.4e9, 1_000_000, 1000)


def test_target_flops_sets_the_horizon_the_arithmetic_says():
    budget = 3e14
    cfg = GPTConfig(depth=4, vocab_size=1000, max_seq_len=256)
    plan = make_plan(4, vocab_size=1000, max_seq_len=256, total_batch_size=2**12, target_flops=budget)
    assert plan.num_steps == round(budget / (flops_per_token(cfg) * 2**12))
    assert abs(plan.total_flops - budget) <= 0.5 * flops_per_token(cfg) * 2**12
    assert plan.target_tokens == int(budget / flops_per_token(cfg)) and plan.to_dict()["target_flops"] == budget
    derived = make_plan(4, vocab_size=1000, max_seq_len=256, target_flops=budget)  # the batch law reads the budget's tokens
    assert derived.total_batch_size == optimal_batch_tokens(
        int(budget / flops_per_token(cfg)), reference_tokens(1000, ScalingConstants()))
    assert derived.num_steps == round(budget / (flops_per_token(cfg) * derived.total_batch_size))
    with pytest.raises(PicochatError, match="give one"):
        make_plan(4, ratio=20, target_flops=budget)
    with pytest.raises(PicochatError, match="drop num_iterations"):
        make_plan(4, num_iterations=10, target_flops=budget)


def test_plan_cli_target_flops(capsys):
    assert main(["plan", "--depth", "4", "--max-seq-len", "512", "--head-dim", "64", "--total-batch-size", "8192",
                 "--target-flops", "1e15", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_steps"] == round(1e15 / (data["flops_per_token"] * 8192))
    assert data["target_flops"] == 1e15
    assert main(["plan", "--depth", "4", "--target-flops", "1e15"]) == 0
    assert "FLOP budget 1e+15" in capsys.readouterr().out


def test_estimated_hours_follow_the_peak_table():
    plan = make_plan(12)
    hours = plan.estimated_hours("H100", mfu=0.4)
    assert hours == pytest.approx(plan.flops_per_token * plan.tokens / (989e12 * 0.4) / 3600)
    assert plan.estimated_hours("H100", mfu=0.4, n_gpus=8) == pytest.approx(hours / 8)
    assert plan.estimated_hours("A100", mfu=0.4) == pytest.approx(hours * 989 / 312)
    with pytest.raises(PicochatError, match="V100"):
        plan.estimated_hours("V100")


def test_peak_flops_matches_device_names():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200", "fp8") == 2 * 989e12
    assert peak_flops("NVIDIA L40S") == 362e12  # not the L4's figure
    assert peak_flops("NVIDIA A100-SXM4-80GB", "float32") == 156e12
    assert peak_flops("cpu") is None
    with pytest.raises(PicochatError, match="fp8"):
        peak_flops("NVIDIA A100-SXM4-80GB", "float8_e4m3fn")


def test_bad_shape_is_refused():
    with pytest.raises(ModelConfigError):
        make_plan(12, n_kv_heads=4)


def test_constants_file_overrides_the_seed(tmp_path):
    path = tmp_path / "constants.json"
    path.write_text(json.dumps({"ratio": 20, "wd_ref": 0.5, "learning_rates": {"matrix": 0.04}}))
    constants = load_constants(path)
    assert constants.learning_rates == {**DEFAULT_LEARNING_RATES, "matrix": 0.04}
    plan = make_plan(12, constants=constants)
    assert plan.target_tokens == int(20 * plan.scaling_params)
    assert plan.weight_decay == pytest.approx(0.5)
    assert plan.learning_rates["matrix"] == pytest.approx(0.04 * math.sqrt(plan.total_batch_size / 2**19))
    assert ScalingConstants().ratio == 10.5


@pytest.mark.parametrize("content,message", [
    ('{"ratoi": 10}', "ratoi"),
    ('{"ratio": "ten"}', "ratio"),
    ('{"learning_rates": {"muon": 0.1}}', "learning_rates"),
    ("not json", "JSON"),
])
def test_bad_constants_file_names_the_problem(tmp_path, content, message):
    path = tmp_path / "constants.json"
    path.write_text(content)
    with pytest.raises(PicochatError, match=message):
        load_constants(path)


def test_plan_cli_prints_a_table(capsys):
    assert main(["plan", "--depth", "12"]) == 0
    out = capsys.readouterr().out
    assert "width 768" in out and "2^19" in out and "weight decay" in out and "H100" in out


def test_plan_cli_json(capsys, tmp_path):
    assert main(["plan", "--depth", "12", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    plan = make_plan(12)
    for key in ("depth", "width", "n_heads", "scaling_params", "tokens", "total_batch_size",
                "num_steps", "weight_decay", "flops_per_token"):
        assert key in data
    assert (data["depth"], data["width"], data["n_heads"]) == (12, 768, 6)
    assert data["total_batch_size"] == 2**19 and data["num_steps"] == plan.num_steps
    assert data["estimate"]["hours"] == pytest.approx(plan.estimated_hours())
    constants = tmp_path / "c.json"
    constants.write_text('{"ratio": 21}')
    assert main(["plan", "--depth", "12", "--json", "--constants", str(constants)]) == 0
    assert json.loads(capsys.readouterr().out)["target_tokens"] == 2 * plan.target_tokens


@pytest.mark.parametrize("flags,message", [
    (["--head-dim", "7"], "head_dim"),
    (["--depth", "0"], "depth"),
    (["--n-kv-heads", "4"], "n_kv_heads"),
    (["--window-pattern", "SXL"], "window_pattern"),
    (["--gpu", "V100"], "V100"),
    (["--constants", "/nonexistent/c.json"], "c.json"),
    (["--target-flops", "1e15", "--num-iterations", "5"], "--target-flops"),
    (["--target-flops", "1e3"], "under half an optimizer step"),
    (["--target-flops", "-1"], "target_flops must be a positive"),
])
def test_plan_cli_refuses_bad_input(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
