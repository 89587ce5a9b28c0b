"""The one round under DistributedDataParallel: 2 processes on CPU (gloo), torchrun-style.

    torchrun --nproc-per-node 2 examples/ddp.py     # or: python examples/ddp.py (starts its 2 processes itself)

What DDP needs for the one round, and why:
- `find_unused_parameters=True`: each step trains one candidate per layer, so the others get no gradient in
  that step, and the candidates that leave are never used again. No re-wrapping after a removal: the
  removed parameters stay registered with DDP, unused, and leave the optimizer (OneRound does that).
- The same `seed` on every rank (OneRound's: the order in which candidates take turns) and the same
  validation examples on every rank (not a DistributedSampler's shard). OneRound also broadcasts rank 0's
  estimates at each check, so every rank removes the same candidates at the same step.
- Give OneRound the DDP model (or its module) and the optimizer over its parameters; finalize
  (kronsearch.finalize_model(ddp.module)) only after training: it replaces modules.
"""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import kronsearch

Split = tuple[torch.Tensor, torch.Tensor]


def teacher_data(seed: int = 0, n: int = 1536) -> tuple[Split, Split]:
    """(train, val) of 64 features and 10 classes labelled by a fixed random linear teacher, float64: the
    same on every rank (built from the seed), made by torch alone so each process starts fast."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 64, generator=generator, dtype=torch.float64)
    y = (x @ torch.randn(64, 10, generator=generator, dtype=torch.float64)).argmax(-1)
    return (x[:1024], y[:1024]), (x[1024:], y[1024:])


def make_model(seed: int = 0) -> nn.Module:
    """A two-layer MLP whose first layer races 2x2, 4x4 and 8x8 blocks, in float64."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 10)).double()
    kronsearch.kronify(model, candidates=[(2, 2), (4, 4), (8, 8)], include=["0"])
    model[0].compute = "factored"  # the same floats in every process ("auto" times the paths per process)
    return model.double()


def train(rank: int, world_size: int, steps: int = 16, select_steps: int = 8, batch: int = 64,
          seed: int = 0) -> dict:
    """Train on this rank's share of each global batch of `batch` examples; call inside a process group
    (world_size 1: one process, the same global batches). Returns the decisions and the final weights."""
    model = make_model(seed)
    ddp = DistributedDataParallel(model, find_unused_parameters=True) if world_size > 1 else model
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
    (x, y), (val_x, val_y) = teacher_data(seed)
    val = [(val_x[i:i + 128], val_y[i:i + 128]) for i in range(0, len(val_y), 128)]  # the same on every rank
    one_round = kronsearch.OneRound(ddp, optimizer, select_steps=select_steps, validate=val, lambda2=1e-4,
                                    seed=seed)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    for step in range(steps):
        mine = order[step * batch:(step + 1) * batch][rank::world_size]  # this rank's half of the global batch
        nn.functional.cross_entropy(ddp(x[mine]), y[mine]).backward()
        optimizer.step()
        optimizer.zero_grad()
    one_round.close()
    kronsearch.finalize_model(model)
    return {"decisions": {n: (d.block, d.step) for n, d in one_round.decisions.items()},
            "left": [(r.step, r.left) for r in one_round.records if r.left],
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def process(rank: int, world_size: int, init_method: str, out: str | None = None, options: dict | None = None) -> dict:
    """One process: join the gloo group, train, leave; with `out`, save the result to out/rank<N>.pt."""
    torch.set_num_threads(1)  # one core per rank
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        result = train(rank, world_size, **(options or {}))
    finally:
        dist.destroy_process_group()
    if out is not None:
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    if rank == 0:
        print(f"decisions: {result['decisions']}; candidates left at {result['left']}")
    return result


def spawn(world_size: int, folder: str, **options) -> list[dict]:
    """Start `world_size` processes (torch.multiprocessing) and return each rank's result."""
    init = f"file://{os.path.join(folder, 'rendezvous')}"
    torch.multiprocessing.spawn(process, args=(world_size, init, folder, options), nprocs=world_size)
    return [torch.load(os.path.join(folder, f"rank{r}.pt")) for r in range(world_size)]


if __name__ == "__main__":
    if "RANK" in os.environ:  # started by torchrun
        process(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://")
    else:
        with tempfile.TemporaryDirectory() as folder:
            spawn(2, folder)
