"""Data-parallel stages (issue 13): the helpers in lora_rlhf/train/distributed.py, and real 2-process runs on
the gloo backend through `accelerate launch`, compared tensor by tensor with 1-process runs of the same recipe.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_rlhf.cli.main import main
from lora_rlhf.config.recipe import RECIPES
from lora_rlhf.metrics import read_metrics
from lora_rlhf.train import distributed

TINY = str(RECIPES / "tiny-test.yaml")
# Dropout off: with it the two runs draw different masks, equal only in distribution. A high learning rate,
# so that an update computed from half the batch would be far outside the tolerance.
OVERRIDES = ["sft.lora.dropout=0", "sft.train.learning_rate=0.01", "rm.train.learning_rate=0.01"]


def test_shards_cover_each_global_batch_in_order():
    for size in (1, 2, 3, 4):
        for n in range(9):
            items = list(range(n))
            parts = [distributed.shard(items, rank, size) for rank in range(size)]
            assert sum(parts, []) == items
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_one_process_helpers_leave_everything_untouched(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    distributed.world.cache_clear()
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = grad = torch.full((3,), 0.5)
    assert distributed.world() == distributed.World(0, 1, 0) and distributed.is_main()
    assert distributed.all_reduce_gradients([param]) == 0 and param.grad is grad
    rows = [(3.0, {"loss": 1.25}), (5.0, {"loss": 2.5})]
    assert distributed.weighted_stats(rows, ("tokens",)) == [rows[0][1], rows[1][1]]
    assert distributed.sum_across(7.0) == 7.0 and distributed.gather_objects("x") == ["x"]
    assert distributed.local_device(torch.device("cuda", 3)) == torch.device("cuda", 3)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_two(*args: str) -> None:
    """`accelerate launch --multi_gpu --num_processes 2 -m lora_rlhf ARGS` on the CPU (torchrun, gloo).

    `--cpu --num_processes 2` would start a single process: accelerate runs several CPU processes through MPI.
    """
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "lora_rlhf", *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(folder / "adapter_model.safetensors")
    if (folder / "head.safetensors").is_file():
        tensors.update({f"head.{k}": v for k, v in load_file(folder / "head.safetensors").items()})
    return tensors


def _assert_same_adapter(one: Path, two: Path, *, exact: bool = False) -> None:
    a, b = _tensors(one), _tensors(two)
    assert a.keys() == b.keys() and a
    for name in a:
        if exact:
            assert torch.equal(a[name], b[name]), name
        else:
            # Summing in another order changes the gradients in their last bits; Adam divides each by its own
            # RMS, which turns that into update differences up to ~1e-5 where a gradient is near 0. One step
            # moves a weight by up to the learning rate (1e-2): half a batch's gradient would be far off.
            torch.testing.assert_close(b[name], a[name], rtol=0, atol=2e-4, msg=name)


@pytest.mark.slow
def test_two_processes_train_sft_and_rm_as_one_process_does(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    for stage in ("sft", "rm"):
        assert main([stage, "--config", TINY, "--output-dir", str(one), *OVERRIDES]) == 0
        _launch_two(stage, "--config", TINY, "--output-dir", str(two), *OVERRIDES)
    for role in ("sft", "reward"):
        _assert_same_adapter(one / "adapters" / role, two / "adapters" / role)
    for stage in ("sft", "rm"):  # written once, by the main process, with the global batch's figures
        rows_one = read_metrics(one / "metrics" / f"{stage}.jsonl")
        rows_two = read_metrics(two / "metrics" / f"{stage}.jsonl")
        assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one]
        for r1, r2 in zip(rows_one, rows_two):
            assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
    last = sorted((two / "checkpoints" / "rm").iterdir())[-1]
    assert (last / "rng.pt").is_file() and (last / "rng-rank-1.pt").is_file()
    assert json.loads((last / "state.json").read_text())["world_size"] == 2

    # Killed after a checkpoint: the 2-process run resumes under 2 processes to the very same reward model...
    killed = tmp_path / "killed"
    shutil.copytree(two, killed)
    shutil.rmtree(killed / "adapters" / "reward")
    shutil.rmtree(sorted((killed / "checkpoints" / "rm").iterdir())[-1])
    refused = tmp_path / "refused"
    shutil.copytree(killed, refused)
    _launch_two("rm", "--config", TINY, "--output-dir", str(killed), "--resume", *OVERRIDES)
    _assert_same_adapter(two / "adapters" / "reward", killed / "adapters" / "reward", exact=True)
    # ... and is refused, in one line, under another number of processes.
    assert main(["rm", "--config", TINY, "--output-dir", str(refused), "--resume", *OVERRIDES]) == 2
    assert "written by 2 process(es) and this run has 1" in capsys.readouterr().err
