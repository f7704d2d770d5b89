"""MuonAdamW: one optimizer, one step(), Muon for the block matrices and AdamW for the rest.

Each param group carries `kind` ("muon" or "adamw") and its own hyperparameters:
  muon:  lr, weight_decay, momentum, nesterov, ns_steps   (all params of one shape)
         muon_eq, muon_plus, normuon, normuon_beta2       (refinements, off by default: muon.py)
  adamw: lr, weight_decay, betas, eps
plus `initial_lr` (set to lr at construction) so schedules can multiply it.

Hyperparameters are read from the group dict inside step() and copied into 0-D tensors,
never passed as step() arguments: a schedule that changes lr/wd/momentum then never
makes torch.compile recompile (nanochat dev/LOG.md: hyperparameters passed as arguments trigger a recompile per step).

Distributed (torch.distributed initialised, world > 1, no DDP wrapper): step() averages
the gradients itself. AdamW grads are all-reduced and every rank applies the same update.
Muon grads of a group are stacked and reduce-scattered, so rank r receives the averaged
grads of its share (matrices [r·c, (r+1)·c), c = ⌈K/world⌉), orthogonalises only those,
and all-gathers the new weights: every rank ends with identical parameters, equal to one
process stepping on the averaged gradient. Muon momentum (and NorMuon's second moment)
is therefore sharded per rank (ZeRO-2 style): a rank's state_dict holds only its share,
and must be resumed at the same world size. Every parameter is expected to receive a gradient; a missing one counts
as zero (so all ranks always join the same collectives).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from picochat.optim.adamw import adamw_step
from picochat.optim.muon import cautious_weight_decay_step, muon_update, neuron_second_moment, shape_lr_scale

MUON_DEFAULTS = {"momentum": 0.95, "nesterov": True, "ns_steps": 5, "weight_decay": 0.0,
                 "muon_eq": False, "muon_plus": False, "normuon": False, "normuon_beta2": 0.9}
ADAMW_DEFAULTS = {"betas": (0.8, 0.95), "eps": 1e-10, "weight_decay": 0.0}


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _grad_or_zeros(p: Tensor) -> Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)


class MuonAdamW(torch.optim.Optimizer):
    def __init__(self, param_groups: list[dict], muon_dtype: torch.dtype = torch.float32):
        """`muon_dtype`: bf16 on CUDA bf16 runs, fp32 otherwise (orthogonalisation precision)."""
        groups = [self._with_defaults(dict(g)) for g in param_groups]
        super().__init__(groups, defaults={})
        self.muon_dtype = muon_dtype
        self.rank, self.world_size = _world()
        self._scalar_slots: dict[int, dict[str, Tensor]] = {}

    @staticmethod
    def _with_defaults(group: dict) -> dict:
        kind = group.get("kind")
        if kind not in ("muon", "adamw"):
            raise ValueError(f"param group kind must be 'muon' or 'adamw', got {kind!r}")
        group["params"] = list(group["params"])
        for key, value in (MUON_DEFAULTS if kind == "muon" else ADAMW_DEFAULTS).items():
            group.setdefault(key, value)
        group.setdefault("initial_lr", group["lr"])
        if kind == "muon":
            shapes = {tuple(p.shape) for p in group["params"]}
            if len(shapes) > 1 or any(len(s) < 2 for s in shapes):
                raise ValueError(f"a muon group holds matrices of one shape, got shapes {sorted(shapes)}")
        return group

    def load_state_dict(self, state_dict: dict) -> None:
        """Saved groups replace the live ones; a checkpoint from before an option existed gets its default."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            self._with_defaults(group)

    def _scalars(self, index: int, device: torch.device, **values: float) -> dict[str, Tensor]:
        """The group's hyperparameters as persistent 0-D tensors, refilled in place each step."""
        slots = self._scalar_slots.setdefault(index, {})
        for name, value in values.items():
            if name not in slots:
                slots[name] = torch.zeros((), dtype=torch.float32, device=device)
            slots[name].fill_(value)
        return slots

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Phase 1: launch every gradient reduction; phase 2: wait on each group in turn,
        # update, launch its gather; phase 3: finish the gathers (copy weights back).
        groups = [(i, g) for i, g in enumerate(self.param_groups) if g["params"]]
        reductions = [self._launch_reduce(g) for _, g in groups]
        gathers = [self._update_group(i, g, r) for (i, g), r in zip(groups, reductions)]
        for gather in gathers:
            if gather is not None:
                gather()
        return loss

    # -- gradient averaging ------------------------------------------------------------

    def _launch_reduce(self, group: dict):
        if group["kind"] == "adamw":
            grads = [_grad_or_zeros(p) for p in group["params"]]
            works = [dist.all_reduce(g, async_op=True) for g in grads] if self.world_size > 1 else []
            return grads, works
        stacked = self._padded_grad_stack(group["params"])
        if self.world_size == 1:
            return stacked, []
        shard = torch.empty_like(stacked[: len(stacked) // self.world_size])
        # SUM then divide: gloo has no AVG.
        return shard, [dist.reduce_scatter_tensor(shard, stacked, async_op=True)]

    def _padded_grad_stack(self, params: list[Tensor]) -> Tensor:
        chunk = math.ceil(len(params) / self.world_size)
        grads = [_grad_or_zeros(p).float() for p in params]
        grads += [torch.zeros_like(grads[0])] * (chunk * self.world_size - len(params))
        return torch.stack(grads)

    def _wait_mean(self, reduction) -> Tensor | list[Tensor]:
        grads, works = reduction
        for work in works:
            work.wait()
        if self.world_size > 1:
            for g in grads if isinstance(grads, list) else [grads]:
                g.div_(self.world_size)
        return grads

    # -- updates -------------------------------------------------------------------------

    def _update_group(self, index: int, group: dict, reduction):
        grads = self._wait_mean(reduction)
        if group["kind"] == "adamw":
            self._adamw_group(index, group, grads)
            return None
        return self._muon_group(index, group, grads)

    def _adamw_group(self, index: int, group: dict, grads: list[Tensor]) -> None:
        beta1, beta2 = group["betas"]
        hp = self._scalars(index, group["params"][0].device, lr=group["lr"], weight_decay=group["weight_decay"],
                           beta1=beta1, beta2=beta2, eps=group["eps"])
        for p, grad in zip(group["params"], grads):
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
            state["step"] += 1
            adamw_step(p, grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                       hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"])

    def _muon_group(self, index: int, group: dict, shard_grads: Tensor):
        """Update this rank's share of the group's matrices; return the finish step that
        gathers everyone's new weights (None when there is nothing to gather)."""
        params = group["params"]
        chunk = len(shard_grads)
        start = self.rank * chunk
        owned = params[start:start + chunk]
        hp = self._scalars(index, params[0].device, lr=group["lr"] * shape_lr_scale(params[0].shape),
                           weight_decay=group["weight_decay"], momentum=group["momentum"],
                           normuon_beta2=group["normuon_beta2"])
        new_weights = torch.zeros_like(shard_grads)
        if owned:
            owned_grads = shard_grads[: len(owned)]
            state = self.state[params[0]]  # the group's stacked state, keyed by its first matrix
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(owned_grads)
            if group["normuon"] and "second_momentum_buffer" not in state:
                state["second_momentum_buffer"] = neuron_second_moment(owned_grads)
            update = muon_update(owned_grads, state["momentum_buffer"], hp["momentum"],
                                 group["nesterov"], group["ns_steps"], self.muon_dtype,
                                 equilibrate=group["muon_eq"], renormalize=group["muon_plus"],
                                 second_moment=state["second_momentum_buffer"] if group["normuon"] else None,
                                 beta2=hp["normuon_beta2"])
            weights = torch.stack([p.float() for p in owned])
            cautious_weight_decay_step(weights, update, hp["lr"], hp["weight_decay"])
            new_weights[: len(owned)] = weights
        if self.world_size == 1:
            for p, w in zip(params, new_weights):
                p.copy_(w)
            return None
        gathered = torch.empty((chunk * self.world_size, *params[0].shape), dtype=torch.float32,
                               device=params[0].device)
        work = _all_gather(gathered, new_weights)

        def finish() -> None:
            work.wait()
            for p, w in zip(params, gathered):
                p.copy_(w)
        return finish


def _all_gather(output: Tensor, shard: Tensor):
    # all_gather_single is the name newer torch prefers; all_gather_into_tensor the older one.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return gather(output, shard, async_op=True)
