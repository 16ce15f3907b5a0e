"""The PPO-ptx stage (InstructGPT §3.5): policy and value trained on one base beside the frozen sft and reward.

    for each iteration:
        rollout   = sample from policy; score with reward; log-probs of sft (reference); values of value
        rewards   = score at the last token - beta * KL per token  (eq. 2);  advantages by GAE
        update    = clipped surrogate (+ gamma_ptx * LM loss) for policy, clipped value loss for value
        beta      = KL controller (fixed, or adaptive as in Ziegler et al. 2019)

Writes metrics/ppo.jsonl, checkpoints/ppo/ (resumable: roles, optimizers, schedulers, KL controller,
score statistics, RNG states, data positions) and finally adapters/value/ and adapters/policy/ (policy last:
its folder marks the stage finished). With ppo.advantage rloo or grpo (critic-free, issue 27) there is no
value role: none is created, run, optimised, checkpointed or written (docs/critic_free.md).

Under `accelerate launch` (issue 13) each process rolls out its equal share of every batch of prompts
(its own sampling seed), the figures, the KL fed to the controller and the score statistics are global
(lora_rlhf.ppo.optimize), and gradients are averaged, so every process holds the same policy and value.
The PPO-ptx batch is the same on every process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.metrics import MetricsWriter, read_metrics
from lora_rlhf.models.lora import LoraSettings
from lora_rlhf.models.positions import check_lengths
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.paths import RunLayout
from lora_rlhf.ppo import guard
from lora_rlhf.ppo.config import PPOConfig
from lora_rlhf.ppo.data import Cycler, PtxStream, load_ppo_prompts
from lora_rlhf.ppo.hooks import Hooks
from lora_rlhf.ppo.kl_control import make_kl_controller
from lora_rlhf.ppo.optimize import Optimizers, add_advantages, build_optimizers, step_schedulers, train_on_rollout
from lora_rlhf.ppo.rewards import RunningMoments
from lora_rlhf.ppo.rollout import TextScorer, make_rollout
from lora_rlhf.train import distributed
from lora_rlhf.train.checkpoint import load_checkpoint, resume_checkpoint, save_checkpoint
from lora_rlhf.train.loop import make_accelerator
from lora_rlhf.train.records import open_metrics

logger = logging.getLogger(__name__)


def setup_roles(stack: RoleStack, config: PPOConfig) -> None:
    """policy <- copy of sft; value <- copy of reward, head included (InstructGPT §3.5), or fresh; no value role
    for a critic-free estimator."""
    for needed, stage in (("sft", "sft"), ("reward", "rm")):
        if not stack.has_role(needed):
            raise LoraRlhfError(f"ppo needs the {needed!r} role: train it first (`lora-rlhf {stage}`) or load it")
    if not stack.has_role("policy"):
        stack.copy_role("sft", "policy")
    if not config.critic_free and not stack.has_role("value"):
        if config.value_init == "reward":
            stack.copy_role("reward", "value")
        else:
            stack.add_role("value", LoraSettings())


class _State:
    """What changes from one iteration to the next and must be checkpointed besides weights and optimizers."""

    def __init__(self, config: PPOConfig, prompts: list, ptx: PtxStream | None) -> None:
        rewards = config.rewards
        self.kl_controller = make_kl_controller(
            rewards.kl_control, rewards.kl_coef, rewards.kl_target, rewards.kl_horizon
        )
        self.moments = RunningMoments()
        self.prompts = Cycler(prompts, config.seed)
        self.ptx = ptx

    def to_json(self) -> dict:
        return {
            "prompt_position": self.prompts.position,
            "ptx_position": self.ptx.cycler.position if self.ptx else 0,
            "kl_controller": self.kl_controller.state_dict(),
            "score_moments": self.moments.state_dict(),
        }

    def load_json(self, state: dict) -> None:
        self.prompts.position = state["prompt_position"]
        if self.ptx is not None:
            self.ptx.cycler.position = state["ptx_position"]
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.moments.load_state_dict(state["score_moments"])


def train_ppo(
    stack: RoleStack,
    config: PPOConfig,
    output_dir: Path,
    *,
    resume: bool = False,
    gold_fn: TextScorer | None = None,
    reward_fn: TextScorer | None = None,
    report_to: Sequence[str] = (),
    hooks: Hooks = (),
) -> dict[str, float]:
    """Run PPO-ptx for `config.steps` iterations; returns the first and last figures (reward, kl, gold).

    Figures go to metrics/ppo.jsonl and to the `report_to` trackers (lora_rlhf.tracking).

    `gold_fn` (a gold judge) is only logged; `reward_fn` replaces the reward role's score (a programmatic reward).
    `hooks` see every iteration's phases (lora_rlhf.ppo.hooks: generate, score, advantages, the backward passes,
    the optimizer steps).
    """
    output_dir = Path(output_dir)
    check_lengths(stack.base_model, _lengths(config))
    prompts, report = load_ppo_prompts(config.prompts, stack.tokenizer, config.max_prompt_length, config.on_bad_row)
    report.log()
    ptx = _ptx_stream(stack, config)
    _check_split(config)
    torch.manual_seed(
        config.seed
    )  # before setup_roles: a fresh value adapter's init draws from it (resume restores RNG)
    setup_roles(stack, config)
    trained = config.trained_roles
    stack.set_trainable(*trained)
    for role in trained:
        distributed.broadcast_parameters(stack.role_parameters(role))  # every process starts from the same roles
    accelerator = make_accelerator(config.optim.mixed_precision, stack.device)
    optimizers = build_optimizers(stack, config.optim, config.steps, accelerator, critic=not config.critic_free)
    state = _State(config, prompts, ptx)
    ckpt_dir = RunLayout(output_dir).checkpoints("ppo")
    step = _resume(stack, config, optimizers, state, ckpt_dir) if resume else 0
    if step == 0:
        # The rollouts' sampling starts from the seed, whatever set-up drew; each process samples its own.
        torch.manual_seed(config.seed + distributed.world().rank)
    metrics = open_metrics(output_dir, "ppo", resume_step=step if step else None, report_to=report_to)
    try:
        with stack.training(dropout=False):  # PPO's ratio needs pi_old == pi at the first minibatch
            _iterate(stack, config, optimizers, state, step, metrics, ckpt_dir, (gold_fn, reward_fn), hooks)
    finally:
        metrics.close()
    stack.set_trainable()
    for role in trained:
        distributed.check_replicas(stack.role_parameters(role), f"ppo: {role}")
    for role in reversed(trained) if distributed.is_main() else ():  # policy last: it marks the stage finished
        stack.save_role(role, RunLayout(output_dir).adapter(role))
    summary = {"steps": config.steps, "prompts": len(prompts), "dropped": report.dropped}
    rows = read_metrics(RunLayout(output_dir).metrics("ppo"))  # the whole run's, also after a resume
    for key in ("reward", "kl", "gold"):
        if rows and key in rows[-1]:
            summary[f"{key}_first"], summary[f"{key}_last"] = rows[0].get(key, float("nan")), rows[-1][key]
    return summary


def _iterate(
    stack,
    config: PPOConfig,
    optimizers: Optimizers,
    state: _State,
    step: int,
    metrics: MetricsWriter,
    ckpt_dir: Path,
    scorers: tuple[TextScorer | None, TextScorer | None],
    hooks: Hooks,
) -> None:
    desc = f"ppo: {' + '.join(config.trained_roles)}" + (f" ({config.advantage})" if config.critic_free else "")
    progress = tqdm(total=config.steps, initial=step, desc=desc, unit="step", disable=not distributed.is_main())
    while step < config.steps:
        step += 1
        figures = _one_iteration(stack, config, optimizers, state, step, ckpt_dir, scorers, hooks)
        progress.update(1)
        progress.set_postfix(reward=f"{figures['reward']:.3f}", kl=f"{figures['kl']:.3f}")
        if step % config.logging_steps == 0 or step == config.steps:
            metrics.log(step, **figures)
        if step % config.save_steps == 0 or step == config.steps:
            save_checkpoint(
                ckpt_dir,
                step,
                stack,
                config.trained_roles,
                optimizers.stateful(),
                state.to_json(),
                keep=config.keep_checkpoints,
            )
    progress.close()


def _one_iteration(
    stack,
    config: PPOConfig,
    optimizers: Optimizers,
    state: _State,
    step: int,
    ckpt_dir: Path,
    scorers: tuple[TextScorer | None, TextScorer | None],
    hooks: Hooks,
) -> dict[str, float]:
    gold_fn, reward_fn = scorers
    kl_coef = state.kl_controller.value
    batch = distributed.shard(state.prompts.next(config.rollout_batch_size))  # this process's share
    # A prompt's samples are consecutive rows (generate encodes the prompt once for all of them).
    batch = [prompt for prompt in batch for _ in range(config.samples_per_prompt)]
    rollout, timing = make_rollout(
        stack,
        batch,
        config.sampling,
        config.micro_batch_size,
        reward_fn,
        with_value=not config.critic_free,
        hooks=hooks,
    )
    figures = add_advantages(
        rollout, kl_coef, config.rewards, state.moments, config.samples_per_prompt, config.advantage, hooks=hooks
    )
    if gold_fn is not None:
        figures["gold"] = sum(gold_fn(rollout.prompts, rollout.responses)) / len(rollout)
    figures = distributed.mean_figures(figures)  # the whole rollout's figures, the same on every process
    guard.check(figures, step=step, kl_ceiling=config.rewards.kl_ceiling, folder=ckpt_dir, stack=stack, rollout=rollout)
    start = time.perf_counter()
    lrs = {"lr_policy": optimizers.policy_scheduler.get_last_lr()[0]}
    if optimizers.value_scheduler is not None:
        lrs["lr_value"] = optimizers.value_scheduler.get_last_lr()[0]
    trained = train_on_rollout(stack, rollout, optimizers, config, state.ptx, step, kl_coef, hooks=hooks)
    figures.update(distributed.mean_figures(trained))
    step_schedulers(optimizers)
    timing["time_train"] = time.perf_counter() - start
    guard.check(figures, step=step, kl_ceiling=None, folder=ckpt_dir, stack=stack, rollout=rollout)
    state.kl_controller.update(figures["kl"], config.rollout_sequences)
    figures.update(distributed.mean_figures(timing), **lrs, kl_coef=kl_coef)  # the rates this iteration's updates used
    return figures


def _check_split(config: PPOConfig) -> None:
    """Every process must hold an equal share of each minibatch (and so of each rollout)."""
    size = distributed.world().size
    if config.mini_batch_size % size:
        raise LoraRlhfError(
            f"ppo.mini_batch_size: {config.mini_batch_size} does not split evenly over {size} processes; "
            f"use a multiple of {size}"
        )


def _lengths(config: PPOConfig) -> dict[str, int]:
    """The sequence lengths a PPO run reaches: a rollout (the longest prompt and its response), a ptx example."""
    rollout = config.max_prompt_length + config.sampling.max_new_tokens
    lengths = {"ppo.max_prompt_length + ppo.sampling.max_new_tokens": rollout}
    return lengths | ({"ppo.ptx.max_length": config.ptx.max_length} if config.ptx.enabled else {})


def _ptx_stream(stack: RoleStack, config: PPOConfig) -> PtxStream | None:
    ptx = config.ptx
    if not ptx.enabled:
        if ptx.coef > 0:
            logger.warning(
                "ppo: ppo.ptx.coef is %g but ppo.ptx.data.path is empty: running plain PPO, without the "
                "PPO-ptx term (set ppo.ptx.data.path, or ppo.ptx.coef: 0 to silence this)",
                ptx.coef,
            )
        return None
    return PtxStream.load(ptx.data, stack.tokenizer, ptx.max_length, ptx.batch_size, config.seed, config.on_bad_row)


def _resume(stack: RoleStack, config: PPOConfig, optimizers: Optimizers, state: _State, ckpt_dir: Path) -> int:
    latest = resume_checkpoint(ckpt_dir)
    if latest is None:
        return 0
    saved = load_checkpoint(latest, stack, config.trained_roles, optimizers.stateful())
    state.load_json(saved)
    logger.info("ppo: resuming from %s (step %d)", latest, saved["step"])
    return int(saved["step"])
