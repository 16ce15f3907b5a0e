"""One update rule for every stage (train/optim.py): clip, then step only when the norm and the update are finite."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator

from lora_rlhf.train.config import AdamWConfig
from lora_rlhf.train.optim import adamw, clip_and_step


def _one_parameter(grad: float, lr: float = 0.1):
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer, schedule = adamw([weight], lr, AdamWConfig(), scheduler="constant", warmup_steps=0, total_steps=1)
    weight.grad = torch.full_like(weight, grad)
    return weight, optimizer


def test_a_finite_gradient_is_clipped_and_applied():
    weight, optimizer = _one_parameter(3.0)
    done = clip_and_step([weight], optimizer, Accelerator(cpu=True), max_grad_norm=1.0)
    assert done.updated and done.grad_norm == pytest.approx(3.0 * math.sqrt(2))
    assert torch.allclose(weight.detach(), torch.tensor([0.9, 1.9]))  # Adam's first step moves by lr
    assert weight.grad is None


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])
def test_a_non_finite_gradient_never_reaches_the_weights(max_grad_norm):
    weight, optimizer = _one_parameter(float("nan"))
    done = clip_and_step([weight], optimizer, Accelerator(cpu=True), max_grad_norm=max_grad_norm)
    if max_grad_norm:
        assert not done.updated and math.isnan(done.grad_norm)
        assert torch.equal(weight.detach(), torch.tensor([1.0, 2.0]))
    else:  # nothing measured the norm: the NaN update is taken and the caller's guard finds the NaN loss/weights
        assert done.grad_norm is None


def test_an_update_too_large_for_the_dtype_is_not_taken():
    # Adam's first step is lr / (1 - beta1) = 1e39, which a float32 cannot hold: torch refuses before writing.
    weight, optimizer = _one_parameter(1.0, lr=1.0e38)
    done = clip_and_step([weight], optimizer, Accelerator(cpu=True), max_grad_norm=0.0)
    assert not done.updated
    assert torch.equal(weight.detach(), torch.tensor([1.0, 2.0]))
