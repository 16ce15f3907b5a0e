"""The helpers of lora_rlhf/train/distributed.py on a real 2-process gloo group, with hand-computed values.

Run by tests/test_distributed.py under `accelerate launch --multi_gpu --num_processes 2` (not collected by
pytest: no test_ prefix); any failed assertion exits non-zero.
"""

from __future__ import annotations

import torch

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.ppo.advantages import whiten, whiten_across_processes
from lora_rlhf.train import distributed


def main() -> None:
    here = distributed.world()
    assert here.size == 2 and here.rank in (0, 1), here
    rank = here.rank
    assert distributed.shard(list(range(5))) == ([0, 1, 2] if rank == 0 else [3, 4])

    # Gradients: rank r holds r + 1 (rank 1 has no gradient for `b`: an empty shard's zeros).
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    a.grad = torch.full((2,), rank + 1.0)
    b.grad = torch.ones(3) if rank == 0 else None
    assert distributed.all_reduce_gradients([a, b]) == 5 * 4  # five float32 values
    assert torch.equal(a.grad, torch.full((2,), 3.0)) and torch.equal(b.grad, torch.ones(3))
    a.grad = torch.full((2,), rank + 1.0)
    distributed.all_reduce_gradients([a], average=True)
    assert torch.equal(a.grad, torch.full((2,), 1.5))

    # Figures: tokens 1 and 3 -> the loss is the token-weighted mean, the count a sum.
    mine = (1.0, {"loss": 2.0, "tokens": 1.0}) if rank == 0 else (3.0, {"loss": 4.0, "tokens": 3.0})
    assert distributed.weighted_stats([mine], ("tokens",)) == [{"loss": 3.5, "tokens": 4.0}]
    assert distributed.mean_figures({"kl": 1.0 + 2 * rank}) == {"kl": 2.0}
    assert distributed.gather_tensor(torch.tensor([float(rank)])).tolist() == [0.0, 1.0]

    # Whitening over both processes' rows equals whitening the concatenated batch in one process.
    generator = torch.Generator().manual_seed(0)
    x, mask = torch.randn(4, 5, generator=generator), (torch.rand(4, 5, generator=generator) > 0.3).float()
    rows = slice(0, 2) if rank == 0 else slice(2, 4)
    torch.testing.assert_close(whiten_across_processes(x[rows], mask[rows]), whiten(x, mask)[rows])

    distributed.check_replicas([a], "equal")
    a.data += rank
    try:
        distributed.check_replicas([a], "sft: sft")
    except LoraRlhfError as exc:
        assert "process 1 differ from those of process 0" in str(exc), exc
    else:
        raise AssertionError("check_replicas accepted different weights")
    print(f"rank {rank}: ok")


if __name__ == "__main__":
    main()
