"""The optimizer: Polar Express math, cautious decay, AdamW, MuonAdamW (one process and two)."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from picochat.optim import (
    MuonAdamW, OptimHParams, adamw_step, build_optimizer, cautious_weight_decay_step, orthogonalize,
)
from picochat.optim.muon import nesterov_momentum
from picochat.runtime import shutdown_runtime


@pytest.fixture(autouse=True)
def one_thread():
    """These matmuls are tiny: on a shared 2-core machine thread hand-offs cost more than they save."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def matrix_with_condition(rows: int, cols: int, condition: float, seed: int) -> torch.Tensor:
    """U·diag(s)·Vᵀ with singular values log-spaced from 3 down to 3/condition."""
    g = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    U, _ = torch.linalg.qr(torch.randn(rows, k, generator=g))
    V, _ = torch.linalg.qr(torch.randn(cols, k, generator=g))
    s = 3.0 * torch.logspace(0, -torch.log10(torch.tensor(condition)).item(), k)
    return U @ torch.diag(s) @ V.T


# -- muon.py -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (96, 32)])
def test_orthogonalize_pushes_singular_values_to_one(shape):
    G = matrix_with_condition(*shape, condition=100.0, seed=0)
    singular = torch.linalg.svdvals(orthogonalize(G))
    assert torch.linalg.svdvals(G).max() / torch.linalg.svdvals(G).min() > 50  # the input is far from orthogonal
    assert singular.min() > 0.8 and singular.max() < 1.2
    assert singular.std() < 0.15


@pytest.mark.parametrize("shape", [(32, 96), (96, 32)])
def test_orthogonalize_random_gaussian_wide_and_tall(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    singular = torch.linalg.svdvals(orthogonalize(G))
    assert singular.min() > 0.8 and singular.max() < 1.2


def test_orthogonalize_in_bf16_stays_close_to_fp32():
    G = matrix_with_condition(48, 48, condition=20.0, seed=2)
    low = orthogonalize(G, dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    singular = torch.linalg.svdvals(low.float())
    assert singular.min() > 0.75 and singular.max() < 1.25


def test_orthogonalize_stack_equals_each_matrix_and_transposes_consistently():
    G = torch.randn(3, 12, 20, generator=torch.Generator().manual_seed(3))
    stacked = orthogonalize(G)
    for i in range(3):
        torch.testing.assert_close(stacked[i], orthogonalize(G[i]))
    torch.testing.assert_close(orthogonalize(G[0].T), orthogonalize(G[0]).T)


def test_cautious_decay_skips_entries_where_update_and_weight_disagree():
    p = torch.tensor([[1.0, -1.0], [2.0, -2.0]])
    update = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    cautious_weight_decay_step(p, update, lr=0.1, weight_decay=0.5)
    # agree (decayed): 1 − 0.1·(1 + 0.5·1) and −2 − 0.1·(−1 + 0.5·−2); disagree: −1 − 0.1·1, 2 − 0.1·−1
    expected = torch.tensor([[0.85, -1.1], [2.1, -1.8]])
    torch.testing.assert_close(p, expected)


# -- adamw.py ------------------------------------------------------------------------------

def test_adamw_step_matches_torch_adamw():
    g = torch.Generator().manual_seed(4)
    ours = torch.randn(5, 3, generator=g)
    ref = nn.Parameter(ours.clone())
    exp_avg, exp_avg_sq = torch.zeros_like(ours), torch.zeros_like(ours)
    reference = torch.optim.AdamW([ref], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    for step in range(1, 5):
        grad = torch.randn(5, 3, generator=g)
        adamw_step(ours, grad, exp_avg, exp_avg_sq, torch.tensor(float(step)), 0.01, 0.8, 0.95, 1e-10, 0.1)
        ref.grad = grad
        reference.step()
    torch.testing.assert_close(ours, ref.detach())


# -- optimizer.py: one process -------------------------------------------------------------

def one_group_optimizer(kind: str, weight_decay: float = 0.0) -> tuple[MuonAdamW, nn.Parameter]:
    p = nn.Parameter(torch.randn(8, 6, generator=torch.Generator().manual_seed(5)))
    return MuonAdamW([{"kind": kind, "params": [p], "lr": 0.02, "weight_decay": weight_decay}]), p


def step_delta(opt: MuonAdamW, p: nn.Parameter) -> torch.Tensor:
    before = p.detach().clone()
    p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(6))
    opt.step()
    return p.detach() - before


@pytest.mark.parametrize("kind", ["muon", "adamw"])
def test_lr_is_read_from_the_group_dict_at_step_time(kind):
    base_opt, base_p = one_group_optimizer(kind)
    halved_opt, halved_p = one_group_optimizer(kind)
    halved_opt.param_groups[0]["lr"] *= 0.5
    assert halved_opt.param_groups[0]["initial_lr"] == 0.02
    torch.testing.assert_close(step_delta(halved_opt, halved_p), 0.5 * step_delta(base_opt, base_p))


@pytest.mark.parametrize("kind", ["muon", "adamw"])
def test_weight_decay_is_read_from_the_group_dict_at_step_time(kind):
    plain_opt, plain_p = one_group_optimizer(kind)
    decayed_opt, decayed_p = one_group_optimizer(kind)
    decayed_opt.param_groups[0]["weight_decay"] = 0.5
    weights = decayed_p.detach().clone()
    difference = step_delta(decayed_opt, decayed_p) - step_delta(plain_opt, plain_p)
    assert difference.abs().max() > 1e-4
    assert (difference * weights <= 0).all()  # decay only ever pulls toward zero


def test_muon_step_scales_lr_by_shape_and_decays_cautiously():
    opt, p = one_group_optimizer("muon", weight_decay=0.3)
    weights = p.detach().clone()
    grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(6))
    update = orthogonalize(grad.lerp(0.05 * grad, 0.95))  # first Nesterov step: buffer = 0.05·g
    lr = 0.02 * (8 / 6) ** 0.5
    expected = weights - lr * (update + 0.3 * weights * (update * weights >= 0))
    p.grad = grad
    opt.step()
    torch.testing.assert_close(p.detach(), expected)


# -- the Muon refinements (MuonEq, Muon+, NorMuon): off is plain Muon, on is the formula --

EXTRAS = ("muon_eq", "muon_plus", "normuon")


def muon_run(shape: tuple[int, int], steps: int, weight_decay: float = 0.0, **extras) -> tuple[torch.Tensor, list]:
    """A lone matrix stepped by MuonAdamW on seeded grads: (final weights, the grads it saw)."""
    g = torch.Generator().manual_seed(11)
    p = nn.Parameter(torch.randn(*shape, generator=g))
    opt = MuonAdamW([{"kind": "muon", "params": [p], "lr": 0.02, "weight_decay": weight_decay, **extras}])
    grads = [torch.randn(*shape, generator=g) for _ in range(steps)]
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
    return p.detach(), grads


def initial_weights(shape: tuple[int, int]) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(11))


def nesterov_directions(grads: list[torch.Tensor], beta: float = 0.95) -> list[torch.Tensor]:
    """buf ← β·buf + (1−β)·g, direction = (1−β)·g + β·buf."""
    buf, directions = torch.zeros_like(grads[0]), []
    for grad in grads:
        buf = beta * buf + (1 - beta) * grad
        directions.append((1 - beta) * grad + beta * buf)
    return directions


@pytest.mark.parametrize("shape", [(8, 6), (4, 10)])
def test_muon_with_every_extra_off_is_the_plain_muon_step_bit_for_bit(shape):
    """Off must take the plain path: momentum → orthogonalise → cautious decay, the same ops in the same order."""
    got, grads = muon_run(shape, steps=3, weight_decay=0.2, muon_eq=False, muon_plus=False, normuon=False)
    weights = initial_weights(shape).unsqueeze(0)
    buffer = torch.zeros_like(weights)
    lr, wd, beta = (torch.tensor(v) for v in (0.02 * max(1.0, shape[0] / shape[1]) ** 0.5, 0.2, 0.95))
    for grad in grads:
        update = orthogonalize(nesterov_momentum(grad.unsqueeze(0), buffer, beta))
        cautious_weight_decay_step(weights, update, lr, wd)
    assert torch.equal(got, weights[0])


def muon_by_formula(shape: tuple[int, int], grads: list[torch.Tensor], orthogonal_update) -> torch.Tensor:
    """W ← W − lr·U per step (no decay), U from `orthogonal_update(direction, step)`."""
    lr = 0.02 * max(1.0, shape[0] / shape[1]) ** 0.5
    weights = initial_weights(shape)
    for step, direction in enumerate(nesterov_directions(grads)):
        weights = weights - lr * orthogonal_update(direction, step)
    return weights


@pytest.mark.parametrize("shape", [(8, 6), (4, 10)])
def test_muon_eq_equilibrates_rows_before_orthogonalising(shape):
    got, grads = muon_run(shape, steps=2, muon_eq=True)

    def equilibrated(direction, step):
        mean_row_norm = direction.norm() / shape[0] ** 0.5
        rows = [row * mean_row_norm / row.norm() for row in direction]
        return orthogonalize(torch.stack(rows))
    torch.testing.assert_close(got, muon_by_formula(shape, grads, equilibrated))
    assert not torch.allclose(got, muon_run(shape, steps=2)[0])  # it changes the step


@pytest.mark.parametrize("shape", [(8, 6), (4, 10)])
def test_muon_plus_snaps_the_update_to_frobenius_norm_sqrt_min_side(shape):
    got, grads = muon_run(shape, steps=2, muon_plus=True)

    def renormalized(direction, step):
        O = orthogonalize(direction)
        return O * min(shape) ** 0.5 / torch.linalg.matrix_norm(O)
    torch.testing.assert_close(got, muon_by_formula(shape, grads, renormalized))
    assert not torch.allclose(got, muon_run(shape, steps=2)[0])


@pytest.mark.parametrize("shape", [(8, 6), (4, 10)])
def test_normuon_normalizes_each_neuron_by_its_running_rms_and_keeps_the_norm(shape):
    """Per row for a tall matrix (8×6), per column for a wide one (4×10); v ← 0.9·v + 0.1·mean(O²)."""
    got, grads = muon_run(shape, steps=3, normuon=True)
    tall = shape[0] >= shape[1]
    second_moment = torch.zeros(shape[0] if tall else shape[1])

    def normalized(direction, step):
        nonlocal second_moment
        O = orthogonalize(direction)
        per_neuron = O if tall else O.T
        second_moment = 0.9 * second_moment + 0.1 * (per_neuron ** 2).sum(dim=1) / per_neuron.shape[1]
        scaled = per_neuron / second_moment.sqrt().unsqueeze(1)
        scaled = scaled if tall else scaled.T
        return scaled * torch.linalg.matrix_norm(O) / torch.linalg.matrix_norm(scaled)
    torch.testing.assert_close(got, muon_by_formula(shape, grads, normalized))
    assert not torch.allclose(got, muon_run(shape, steps=3)[0])


def test_state_dict_from_before_the_extras_loads_with_them_off():
    params = toy_params()
    old = toy_optimizer(params)
    step_with_grads(old, params, 0)
    saved = old.state_dict()
    for group in saved["param_groups"]:
        for key in ("muon_eq", "muon_plus", "normuon", "normuon_beta2"):
            group.pop(key, None)
    resumed = toy_optimizer(params, normuon=True)
    resumed.load_state_dict(saved)
    assert [g.get("normuon") for g in resumed.param_groups if g["kind"] == "muon"] == [False, False]
    step_with_grads(resumed, params, 1)


def test_muon_group_rejects_mixed_shapes():
    with pytest.raises(ValueError, match="one shape"):
        MuonAdamW([{"kind": "muon", "params": [nn.Parameter(torch.zeros(2, 3)), nn.Parameter(torch.zeros(3, 2))],
                    "lr": 0.02}])


def train_tiny_network(muon_lr: float, steps: int = 60) -> list[float]:
    """Full-batch regression; every weight matrix on Muon (one group per shape), biases on AdamW."""
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    inputs = torch.randn(256, 16)
    targets = torch.sin(inputs[:, :4] * 2) + inputs[:, 4:8] * inputs[:, 8:12]
    weights = [layer.weight for layer in net if isinstance(layer, nn.Linear)]
    biases = [layer.bias for layer in net if isinstance(layer, nn.Linear)]
    opt = MuonAdamW([{"kind": "muon", "params": [w], "lr": muon_lr, "weight_decay": 0.01} for w in weights]
                    + [{"kind": "adamw", "params": biases, "lr": 0.01}])
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(net(inputs), targets)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(p.grad is None for p in net.parameters())
    return losses


def test_muon_adamw_trains_a_tiny_network():
    trained = train_tiny_network(muon_lr=0.05)
    biases_only = train_tiny_network(muon_lr=0.0)
    assert trained[-1] < 0.1 * trained[0]
    assert trained[-1] < 0.5 * biases_only[-1]


# -- setup.py ------------------------------------------------------------------------------

def fake_model_groups() -> dict[str, list[nn.Parameter]]:
    def params(*shapes):
        return [nn.Parameter(torch.zeros(*s)) for s in shapes]
    return {"matrix": params((32, 16), (16, 16), (32, 16), (16, 16)), "embedding": params((100, 16)),
            "value_embedding": params((100, 16)), "lm_head": params((100, 16)),
            "resid_lambda": params((2,)), "x0_lambda": params((2,))}


def test_build_optimizer_groups_every_parameter_once_and_scales_by_width():
    groups = fake_model_groups()
    opt = build_optimizer(groups, OptimHParams(), width=3072)
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for ps in groups.values() for p in ps)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["embedding"]["lr"] == pytest.approx(0.3 * 0.5)  # (3072/768)^−0.5 = 0.5
    assert by_name["lm_head"]["lr"] == pytest.approx(0.008 * 0.5)
    assert by_name["x0_lambda"]["lr"] == 0.5 and by_name["x0_lambda"]["betas"] == (0.96, 0.95)
    muon = [g for g in opt.param_groups if g["kind"] == "muon"]
    assert len(muon) == 2 and all(len(g["params"]) == 2 for g in muon)
    assert muon[0]["weight_decay"] == pytest.approx(0.22 / 16)  # ∝ 1/width²: (768/3072)² = 1/16
    assert build_optimizer(groups, OptimHParams(weight_decay=0.1), 3072).param_groups[-1]["weight_decay"] == 0.1


# -- optimizer.py: a toy problem, resumed and distributed ------------------------------------

STEPS = 3


def toy_params() -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(8)
    shapes = [(8, 6), (8, 6), (8, 6), (4, 10), (5,), (7, 3)]
    return [nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]


def toy_optimizer(params: list[nn.Parameter], **extras) -> MuonAdamW:
    # 3 stacked tall matrices over 2 ranks (one padded slot), a lone wide matrix only rank 0 owns, AdamW.
    return MuonAdamW([{"kind": "muon", "params": params[:3], "lr": 0.02, "weight_decay": 0.2, **extras},
                      {"kind": "muon", "params": params[3:4], "lr": 0.03, "weight_decay": 0.1, **extras},
                      {"kind": "adamw", "params": params[4:], "lr": 0.01, "weight_decay": 0.05}])


def rank_grads(step: int, rank: int, params: list[nn.Parameter]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return [torch.randn(p.shape, generator=g) for p in params]


def step_with_grads(opt: MuonAdamW, params: list[nn.Parameter], step: int, rank: int = 0) -> None:
    for p, grad in zip(params, rank_grads(step, rank, params)):
        p.grad = grad
    opt.step()


@pytest.mark.parametrize("extras", [{}, {"muon_eq": True, "muon_plus": True, "normuon": True}])
def test_state_dict_round_trip_resumes_the_same_trajectory(extras, tmp_path):
    params, resumed_params = toy_params(), toy_params()
    straight, interrupted = toy_optimizer(params, **extras), toy_optimizer(resumed_params, **extras)
    for step in range(2):
        step_with_grads(straight, params, step)
        step_with_grads(interrupted, resumed_params, step)
    torch.save(interrupted.state_dict(), tmp_path / "optim.pt")  # as a checkpoint writes it
    resumed = toy_optimizer(resumed_params)  # the options come back from the saved groups
    resumed.load_state_dict(torch.load(tmp_path / "optim.pt"))
    saved_state = resumed.state_dict()["state"][0]
    assert ("second_momentum_buffer" in saved_state) == bool(extras)
    if extras:
        assert saved_state["second_momentum_buffer"].shape == (3, 8, 1)  # per row of the tall 8×6 stack
    for step in range(2, 4):
        step_with_grads(straight, params, step)
        step_with_grads(resumed, resumed_params, step)
    for a, b in zip(params, resumed_params):
        assert torch.equal(a, b)


# Plain Muon and each refinement alone; one spawn runs them all (starting processes dominates the cost).
DISTRIBUTED_OPTIONS = {"plain": {}, **{extra: {extra: True} for extra in EXTRAS}}


def distributed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    for name, extras in DISTRIBUTED_OPTIONS.items():
        params = toy_params()
        opt = toy_optimizer(params, **extras)
        for step in range(STEPS):
            step_with_grads(opt, params, step, rank)
        torch.save([p.detach() for p in params], f"{out_dir}/{name}-rank{rank}.pt")
    shutdown_runtime()


@pytest.mark.slow
def test_two_process_step_equals_one_process_on_averaged_grads_with_each_extra(tmp_path):
    world = 2
    mp.spawn(distributed_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    for name, extras in DISTRIBUTED_OPTIONS.items():
        params = toy_params()
        opt = toy_optimizer(params, **extras)
        for step in range(STEPS):
            per_rank = [rank_grads(step, r, params) for r in range(world)]
            for p, *grads in zip(params, *per_rank):
                p.grad = torch.stack(grads).mean(0)
            opt.step()
        rank0, rank1 = (torch.load(tmp_path / f"{name}-rank{r}.pt") for r in range(world))
        initial = toy_params()
        for ours, theirs, other, start in zip(params, rank0, rank1, initial):
            assert torch.equal(theirs, other), name  # every rank holds identical weights
            assert not torch.equal(theirs, start), name
            torch.testing.assert_close(theirs, ours.detach(), rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
