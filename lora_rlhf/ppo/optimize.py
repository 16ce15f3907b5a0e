"""One PPO iteration's learning: rewards and advantages of a rollout, then clipped updates of policy and value.

Policy and value are separate adapters with separate optimizers (InstructGPT uses a separate value
network initialised from the RM, with its own learning rate), so each role's loss is backpropagated
while its own adapter is active; gradient checkpointing recomputes under that adapter. With a critic-free
estimator (ppo.advantage rloo / grpo, issue 27) there is no value role: no value optimizer, no value pass.

Data-parallel PPO (issue 13): each process holds an equal share of the rollout. The score moments and the
advantage whitening see every process's rollout; each minibatch is split over the processes, and each
role's gradients are averaged across them before clipping, so every process takes the same step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from lora_rlhf.models import forward
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.ppo.advantages import (
    gae,
    grpo_advantages,
    per_token,
    rloo_advantages,
    sequence_returns,
    whiten,
    whiten_across_processes,
    zero_std_fraction,
)
from lora_rlhf.ppo.config import AdvantageEstimator, PPOConfig, PPOOptimConfig, RewardsConfig
from lora_rlhf.ppo.data import PtxStream
from lora_rlhf.ppo.hooks import Hooks, phase
from lora_rlhf.ppo.losses import PtxLoss, explained_variance, kl_loss, policy_loss, ptx_loss, value_loss
from lora_rlhf.ppo.rewards import (
    RunningMoments,
    leave_one_out_baseline,
    penalize_missing_eos,
    penalized_rewards,
    transform_scores,
)
from lora_rlhf.ppo.rollout import Rollout
from lora_rlhf.ppo.stats import masked_mean
from lora_rlhf.sft.loss import target_mask
from lora_rlhf.train import distributed
from lora_rlhf.train.optim import adamw, clip_and_step


@dataclasses.dataclass
class Optimizers:
    """The trained roles' optimizers and schedulers, and the Accelerator that runs backward and clipping.

    value and value_scheduler are None for a critic-free run (ppo.advantage rloo / grpo).
    """

    accelerator: Any
    policy: torch.optim.Optimizer
    value: torch.optim.Optimizer | None
    policy_scheduler: Any
    value_scheduler: Any

    def roles(self) -> dict[str, torch.optim.Optimizer]:
        """role -> its optimizer, for the roles that have one."""
        return {"policy": self.policy} | ({"value": self.value} if self.value is not None else {})

    def schedulers(self) -> list[Any]:
        return [s for s in (self.policy_scheduler, self.value_scheduler) if s is not None]

    def stateful(self) -> dict[str, Any]:
        """What a checkpoint saves (state_dict / load_state_dict objects)."""
        state = {"policy": self.policy, "policy_scheduler": self.policy_scheduler}
        if self.value is not None:
            state |= {"value": self.value, "value_scheduler": self.value_scheduler}
        return state


def build_optimizers(
    stack: RoleStack, optim: PPOOptimConfig, steps: int, accelerator, *, critic: bool = True
) -> Optimizers:
    """An AdamW and a schedule over `steps` PPO iterations for policy and (with `critic`) value, each at its rate."""

    def make(role: str, lr: float):
        return adamw(
            stack.role_parameters(role),
            lr,
            optim,
            scheduler=optim.scheduler,
            warmup_steps=optim.warmup_steps,
            total_steps=steps,
        )

    policy, policy_scheduler = make("policy", optim.policy_learning_rate)
    value, value_scheduler = make("value", optim.value_learning_rate) if critic else (None, None)
    return Optimizers(accelerator, policy, value, policy_scheduler, value_scheduler)


@torch.no_grad()
def add_advantages(
    rollout: Rollout,
    kl_coef: float,
    config: RewardsConfig,
    moments: RunningMoments,
    samples_per_prompt: int = 1,
    estimator: AdvantageEstimator = "gae",
    *,
    hooks: Hooks = (),
) -> dict[str, float]:
    """Fill `rollout.advantages` (and, for gae, `.returns`) from InstructGPT eq. 2's rewards; return the figures.

    Rows come in groups of `samples_per_prompt` consecutive samples of one prompt (score_baseline, rloo and grpo
    use them). The running score moments, the whitening and `reward_std` cover every process's rollout; the
    other figures are this process's (the trainer averages them across processes). `hooks` see the advantages
    phase (lora_rlhf.ppo.hooks).
    """
    with phase(hooks, "advantages"):
        return _add_advantages(rollout, kl_coef, config, moments, samples_per_prompt, estimator)


def _add_advantages(
    rollout: Rollout,
    kl_coef: float,
    config: RewardsConfig,
    moments: RunningMoments,
    samples_per_prompt: int,
    estimator: AdvantageEstimator,
) -> dict[str, float]:
    mask = rollout.response_mask
    every_score = distributed.gather_tensor(rollout.scores)  # (B * world size,)
    moments.update(every_score)
    scores = transform_scores(
        rollout.scores,
        clip=config.score_clip,
        running=moments,
        normalize=config.score_normalize,
        update_running=False,
    )
    if config.missing_eos_penalty is not None:
        scores = penalize_missing_eos(scores, rollout.finished, config.missing_eos_penalty)
    if config.score_baseline == "prompt_mean":
        scores = leave_one_out_baseline(scores, samples_per_prompt)
    shaped = penalized_rewards(rollout.logprobs, rollout.ref_logprobs, scores, mask, kl_coef, config.kl_estimator)
    advantages, figures = _estimate(estimator, rollout, shaped.rewards, scores, config, samples_per_prompt)
    whiten_advantages = config.whiten_advantages if config.whiten_advantages is not None else estimator != "grpo"
    if not whiten_advantages:
        rollout.advantages = advantages
    elif distributed.world().size == 1:
        rollout.advantages = whiten(advantages, mask)
    else:
        rollout.advantages = whiten_across_processes(advantages, mask)
    sequence_kl = shaped.kl.sum(dim=1)  # (B,) the KL of each whole response, as eq. 2 charges it
    return {
        "reward": rollout.scores.mean().item(),
        "reward_std": every_score.std().item() if len(every_score) > 1 else 0.0,
        "kl": sequence_kl.mean().item(),
        "kl_penalty": (kl_coef * sequence_kl).mean().item(),
        "entropy": masked_mean(rollout.entropy, mask).item(),
        "response_length": mask.sum(dim=1).mean().item(),
        "truncated": (~rollout.finished).float().mean().item(),  # share of responses cut at max_new_tokens
        **figures,
    }


def _estimate(
    estimator: AdvantageEstimator,
    rollout: Rollout,
    rewards: torch.Tensor,
    scores: torch.Tensor,
    config: RewardsConfig,
    group: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(B, A) advantages before whitening, and the estimator's own figures; gae also sets rollout.returns.

    gae: GAE on the per-token rewards against the value role's V(s_t). rloo: the leave-one-out baseline on each
    sample's whole KL-penalised return Σ_t r_t, as TRL's RLOOTrainer. grpo: the group-normalised score, its KL
    paid as a loss term instead (kl_loss), as Shao et al. and TRL's GRPOTrainer (docs/critic_free.md).
    """
    mask = rollout.response_mask
    if estimator == "gae":
        estimate = gae(rollout.values, rewards, mask, config.gamma, config.lam)
        rollout.returns = estimate.returns
        return estimate.advantages, {
            "value_mean": masked_mean(rollout.values, mask).item(),
            "returns_mean": masked_mean(estimate.returns, mask).item(),
            "explained_variance": explained_variance(rollout.values, estimate.returns, mask),
        }
    if estimator == "rloo":
        returns = sequence_returns(rewards, mask)
        sample_advantages = rloo_advantages(returns, group)
        figures = {"returns_mean": returns.mean().item(), "zero_std_groups": zero_std_fraction(returns, group)}
    elif estimator == "grpo":
        sample_advantages = grpo_advantages(scores, group)
        figures = {"zero_std_groups": zero_std_fraction(scores, group)}
    else:
        raise ValueError(f"advantage estimator must be gae, rloo or grpo, not {estimator!r}")
    return per_token(sample_advantages, mask), figures


def train_on_rollout(
    stack: RoleStack,
    rollout: Rollout,
    optimizers: Optimizers,
    config: PPOConfig,
    ptx: PtxStream | None,
    step: int,
    kl_coef: float = 0.0,
    *,
    hooks: Hooks = (),
    trim_micro_batches: bool = True,
) -> dict[str, float]:
    """`ppo_epochs` passes over the rollout in shuffled minibatches; one optimizer step per minibatch and role.

    `kl_coef` (β of this iteration) weighs grpo's KL loss term; the other estimators pay the KL in the reward.

    The rollout's rows come in groups of `samples_per_prompt` samples of one prompt, shuffled as groups.
    With N processes each holds 1/N of the rollout and of every minibatch (mini_batch_size / N rows).
    Each micro-batch is cut to its own padding-free columns (`Rollout.trimmed`, issue 15); with
    `trim_micro_batches` False it keeps the rollout's width, as before issue 15 (scripts/bench_ppo.py
    --compare-before times both). `hooks` see the policy_backward, value_backward and optimizer_step phases.
    """
    generator = torch.Generator().manual_seed(config.seed * 100_003 + step)
    size = config.mini_batch_size // distributed.world().size
    group = config.samples_per_prompt
    rows: list[dict[str, float]] = []
    for _ in range(config.ppo_epochs):
        # Shuffled by prompt: a prompt's samples stay together, so a micro-batch encodes their prompt once.
        prompts = torch.randperm(len(rollout) // group, generator=generator)
        order = (prompts[:, None] * group + torch.arange(group)).flatten()
        for begin in range(0, len(rollout), size):
            part = order[begin : begin + size]
            rows.append(_minibatch(stack, rollout, part, optimizers, config, ptx, kl_coef, hooks, trim_micro_batches))
    keys = dict.fromkeys(k for r in rows for k in r)  # `<role>_update` is there only where a step was not taken
    return {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in keys}


def _minibatch(
    stack: RoleStack,
    rollout: Rollout,
    rows: torch.Tensor,
    opt: Optimizers,
    config: PPOConfig,
    ptx: PtxStream | None,
    kl_coef: float,
    hooks: Hooks,
    trim: bool,
) -> dict[str, float]:
    micros = [rows[i : i + config.micro_batch_size] for i in range(0, len(rows), config.micro_batch_size)]
    stats: list[dict[str, float]] = []
    for index, micro in enumerate(micros):
        part = rollout.select(micro)
        part = part.trimmed() if trim else part  # its own longest prompt and response, not the rollout's
        with phase(hooks, "policy_backward", micro=index):
            stats.append(_policy_backward(stack, part, opt, config, ptx, len(micros), kl_coef))
        if opt.value is not None:
            with phase(hooks, "value_backward", micro=index):
                stats[-1].update(_value_backward(stack, part, opt, config, len(micros)))
    figures = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
    sent = 0
    with phase(hooks, "optimizer_step"):
        for role, optimizer in opt.roles().items():
            sent += distributed.all_reduce_gradients(stack.role_parameters(role), average=True)
            done = clip_and_step(stack.role_parameters(role), optimizer, opt.accelerator, config.optim.max_grad_norm)
            if done.grad_norm is not None:
                figures[f"{role}_grad_norm"] = done.grad_norm
            if not done.updated:  # e.g. an update too large for the dtype (train/optim.py): ppo/guard.py stops on it
                figures[f"{role}_update"] = math.inf
    if distributed.world().size > 1:  # what this optimizer step sent through the all-reduce (issue 13)
        figures["allreduce_bytes"] = float(sent)
    return figures


def _policy_backward(
    stack: RoleStack,
    part: Rollout,
    opt: Optimizers,
    config: PPOConfig,
    ptx: PtxStream | None,
    n_micro: int,
    kl_coef: float,
) -> dict[str, float]:
    p = part.prompt_width
    with stack.use("policy"), opt.accelerator.autocast():
        logprobs = forward.response_logprobs(
            stack, "policy", part.input_ids, part.attention_mask, p, temperature=config.sampling.temperature
        ).logprobs
        out = policy_loss(logprobs.float(), part.logprobs, part.advantages, part.response_mask, config.optim.clip_range)
        loss = out.loss
        figures = {
            "policy_loss": out.loss.item(),
            "clipfrac": out.clipfrac.item(),
            "approx_kl": out.approx_kl.item(),
            "ratio": out.ratio_mean.item(),
        }
        if config.advantage == "grpo" and kl_coef > 0:
            # GRPO pays the KL as a loss term (Shao et al. 2024, eq. 3), at the rollout's reference log-probs.
            kl_out = kl_loss(logprobs.float(), part.ref_logprobs, part.response_mask, kl_coef)
            loss = loss + kl_out.loss
            figures["kl_loss"] = kl_out.kl.item()
        if ptx is not None:
            # PPO-ptx (eq. 2): the pretraining term is mixed into every minibatch.
            ptx_out = _ptx_term(stack, ptx, config.ptx.coef)
            loss = loss + ptx_out.loss
            figures["ptx_loss"] = ptx_out.lm_loss.item()
        opt.accelerator.backward(loss / n_micro)
    figures["loss"] = loss.item()
    return figures


def _ptx_term(stack: RoleStack, ptx: PtxStream, ptx_coef: float) -> PtxLoss:
    """The ptx term on the stream's next batch, under the active `policy` adapter."""
    batch = {k: v.to(stack.device) for k, v in ptx.next().items()}
    logprobs = forward.logprobs(stack, "policy", batch["input_ids"], batch["attention_mask"]).logprobs  # (B, T-1)
    return ptx_loss(logprobs, target_mask(batch["labels"]), ptx_coef)


def _value_backward(
    stack: RoleStack, part: Rollout, opt: Optimizers, config: PPOConfig, n_micro: int
) -> dict[str, float]:
    p = part.prompt_width
    with stack.use("value"), opt.accelerator.autocast():
        values = forward.response_values(stack, "value", part.input_ids, part.attention_mask, p)
        out = value_loss(values.float(), part.values, part.returns, part.response_mask, config.optim.clip_range_value)
        opt.accelerator.backward(out.loss / n_micro)
    return {"value_loss": out.loss.item(), "value_clipfrac": out.clipfrac.item()}


def step_schedulers(optimizers: Optimizers) -> None:
    """The learning-rate schedules count PPO iterations, not minibatches."""
    for scheduler in optimizers.schedulers():
        scheduler.step()
