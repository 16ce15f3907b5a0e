"""A recipe's stages as phases with their shapes, each phase's predicted peak, and what to change if it does not fit.

Phases and what runs in them (the batch each one handles at once):

    sft step       the sft adapter trains on sft.train.batch_size demonstrations of sft.max_length
    rm step        the reward adapter + head on rm.train.batch_size prompts x K ranked responses
    ppo generate   the policy samples ppo.rollout_batch_size prompts x ppo.samples_per_prompt (one generate call)
    ppo score      reference, value and reward read ppo.micro_batch_size rows stacked 3 times, no grad
    ppo train      policy (+ ptx batch) then value, ppo.micro_batch_size rows with grad
    eval           eval.batch_size prompts per generate call (x best_of_n for best-of-N)

During PPO all four adapters, both heads and both optimizers stay resident (roles.py). A critic-free PPO
(ppo.advantage rloo / grpo, issue 27) has no value adapter, head, optimizer or pass: three adapters, the reward
head, one optimizer, rows stacked twice while scoring. The plan also counts one PPO iteration's FLOPs by phase
(plan/compute.py), the time side of the same choices.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

from lora_rlhf.config.recipe import RecipeConfig
from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.models.base import resolve_compute_dtype, resolve_quantization
from lora_rlhf.models.dequantized import copy_fits_in, wants_dequantized_copy
from lora_rlhf.models.logprobs import LOGPROB_CHUNK
from lora_rlhf.plan import estimate
from lora_rlhf.plan.compute import IterationCompute, ppo_iteration_compute
from lora_rlhf.plan.estimate import GiB, PhaseMemory
from lora_rlhf.plan.shapes import ModelShape

PAIRWISE_K = 2  # responses per prompt of a chosen/rejected dataset


@dataclasses.dataclass(frozen=True)
class Setting:
    """The model-level choices the plan depends on."""

    device: str  # "cuda" or "cpu"
    quantization: str  # "nf4", "int8" or "none"
    dtype: str  # compute dtype
    checkpointing: bool


@dataclasses.dataclass
class Plan:
    """Every phase's predicted peak, against an optional memory budget, with knobs for those that do not fit."""

    model: str
    setting: Setting
    phases: list[PhaseMemory]
    budget: int | None = None
    advice: dict[str, list[tuple[str, int]]] = dataclasses.field(default_factory=dict)  # phase -> [(override, total)]
    ppo_compute: IterationCompute | None = None  # FLOPs of one PPO iteration (plan/compute.py)
    ppo_advantage: str = "gae"  # ppo.advantage: gae keeps a value role, rloo / grpo do not

    @property
    def peak(self) -> PhaseMemory:
        return max(self.phases, key=lambda p: p.total)

    @property
    def fits(self) -> bool:
        return self.budget is None or all(p.total <= self.budget for p in self.phases)


def resolve_setting(recipe: RecipeConfig, device: str) -> Setting:
    """The quantization and dtype `recipe.model` would get on `device` ("auto" resolved by the loader's rules, on a
    GPU that supports bf16)."""
    model = recipe.model
    quantization = resolve_quantization(model.quantization, device)
    dtype = resolve_compute_dtype(model.compute_dtype, device, bf16_supported=True)
    return Setting(device, quantization, dtype, bool(model.gradient_checkpointing))


def phase_memories(
    shape: ModelShape, recipe: RecipeConfig, setting: Setting, responses_per_prompt: int, budget: int | None = None
) -> list[PhaseMemory]:
    """Every phase of the recipe's stages, with its terms (see estimate.py), within `budget` if one is given."""
    dtype, gc = estimate.held_dtype(setting.quantization, setting.dtype), setting.checkpointing
    base = estimate.base_weight_bytes(shape, setting.quantization, dtype)
    dequant = _dequantized_weight_bytes(shape, setting)
    sft_r, rm_r = recipe.sft.lora.r, recipe.rm.lora.r
    sft_drop, rm_drop = recipe.sft.lora.dropout > 0, recipe.rm.lora.dropout > 0
    ppo = recipe.ppo
    prompt_and_response = ppo.max_prompt_length + ppo.sampling.max_new_tokens

    def phase(name: str, adapters: int, trained: int, activations: int, logits: int = 0, kv: int = 0) -> PhaseMemory:
        subtotal = base + adapters + trained + activations + logits + kv
        return PhaseMemory(
            name, base, adapters, trained, activations, logits, kv, estimate.runtime_bytes(setting.device, subtotal)
        )

    dropout_dtype = estimate.lora_input_dtype(setting.device, dtype)

    def train_acts(rows: int, tokens: int, dropout: bool) -> int:
        return (
            estimate.activation_bytes(
                shape,
                rows,
                tokens,
                dtype,
                grad=True,
                checkpointing=gc,
                lora_dropout=dropout,
                dropout_dtype=dropout_dtype,
            )
            + dequant
        )

    def no_grad_acts(rows: int, tokens: int) -> int:
        return (
            estimate.activation_bytes(shape, rows, tokens, dtype, grad=False, checkpointing=False, lora_dropout=False)
            + dequant
        )

    # Decoding keeps a 4-bit base dequantized for the call where asked ("auto": on the CPU) and where that takes at
    # most half the memory left free beside it and its KV cache (models/dequantized.py): counted where the phase
    # leaves room for it by that rule (always, with no budget), so the copy never decides whether a plan fits.
    asked = wants_dequantized_copy(recipe.model.dequantized_decoding, setting.device)
    decode_copy = _dequantized_base_bytes(shape, setting) if asked else 0

    def decoding(name: str, adapters: int, trained: int, activations: int, logits: int, kv: int) -> PhaseMemory:
        without = phase(name, adapters, trained, activations, logits, kv)
        free = None if budget is None else budget - (without.total - kv)  # free when decoding starts: no KV cache
        if not decode_copy or (free is not None and not copy_fits_in(decode_copy, free, kv)):
            return without
        return phase(name, adapters, trained, activations + decode_copy, logits, kv)

    sft_rows, sft_len = recipe.sft.train.batch_size, recipe.sft.max_length
    rm_rows = recipe.rm.train.batch_size * responses_per_prompt
    # PPO: sft + policy adapters (sft's rank), reward + value adapters (the RM's rank) and their heads; a critic-free
    # estimator (ppo.advantage rloo / grpo) has no value adapter, head, optimizer state or pass.
    critic = 0 if ppo.critic_free else 1
    ppo_adapters = estimate.adapter_bytes(shape, sft_r, 2, 0) + estimate.adapter_bytes(
        shape, rm_r, 1 + critic, 1 + critic
    )
    ppo_trained = estimate.trained_state_bytes(shape, sft_r, 1, 0) + estimate.trained_state_bytes(
        shape, rm_r, critic, critic
    )
    micro, response = ppo.micro_batch_size, ppo.sampling.max_new_tokens
    policy = train_acts(micro, prompt_and_response, False) + (
        train_acts(ppo.ptx.batch_size, ppo.ptx.max_length, False) if ppo.ptx.enabled else 0
    )
    policy_logits = estimate.logit_bytes(shape, micro, min(response, LOGPROB_CHUNK), grad=True)
    if ppo.ptx.enabled:
        policy_logits += estimate.logit_bytes(
            shape, ppo.ptx.batch_size, min(ppo.ptx.max_length, LOGPROB_CHUNK), grad=True
        )
    value = train_acts(micro, prompt_and_response, False) if critic else 0
    ev = recipe.eval
    eval_rows = ev.batch_size * max(1, ev.best_of_n)
    eval_tokens = ppo.max_prompt_length + ev.max_new_tokens
    return [
        phase(
            "sft step",
            estimate.adapter_bytes(shape, sft_r, 1, 0),
            estimate.trained_state_bytes(shape, sft_r, 1, 0),
            train_acts(sft_rows, sft_len, sft_drop),
            estimate.logit_bytes(shape, sft_rows, min(sft_len, LOGPROB_CHUNK), grad=True),
        ),
        phase(
            "rm step",
            estimate.adapter_bytes(shape, sft_r, 1, 0) + estimate.adapter_bytes(shape, rm_r, 1, 1),
            estimate.trained_state_bytes(shape, rm_r, 1, 1),
            train_acts(rm_rows, recipe.rm.max_length, rm_drop),
        ),
        decoding(
            "ppo generate",
            ppo_adapters,
            ppo_trained,
            no_grad_acts(ppo.rollout_sequences, ppo.max_prompt_length),
            estimate.logit_bytes(shape, ppo.rollout_sequences, 1, grad=False),
            estimate.kv_cache_bytes(shape, ppo.rollout_sequences, prompt_and_response, dtype),
        ),
        phase(
            "ppo score",
            ppo_adapters,
            ppo_trained,
            # Reference, value and reward read the rows in one forward, stacked three times (forward.frozen_scores);
            # twice without a value role.
            no_grad_acts((2 + critic) * micro, prompt_and_response),
            estimate.logit_bytes(shape, micro, min(response, LOGPROB_CHUNK), grad=False),
        ),
        phase("ppo train", ppo_adapters, ppo_trained, max(policy, value), policy_logits),
        decoding(
            "eval",
            estimate.adapter_bytes(shape, sft_r, 2, 0) + estimate.adapter_bytes(shape, rm_r, 1, 1),
            0,
            no_grad_acts(eval_rows, ppo.max_prompt_length),
            estimate.logit_bytes(shape, eval_rows, 1, grad=False),
            estimate.kv_cache_bytes(shape, eval_rows, eval_tokens, dtype),
        ),
    ]


def _dequantized_weight_bytes(shape: ModelShape, setting: Setting) -> int:
    """A 4-/8-bit linear is dequantized to the compute dtype for its matmul: the widest one, transiently."""
    if setting.quantization == "none":
        return 0
    widest = max(fan_in * fan_out for fan_in, fan_out in shape.layer_linears)
    return widest * estimate.DTYPE_BYTES[setting.dtype]


def _dequantized_base_bytes(shape: ModelShape, setting: Setting) -> int:
    """Every decoder linear of a 4-bit base dequantized to the compute dtype at once (int8 and unquantized: 0)."""
    if setting.quantization != "nf4":
        return 0
    return shape.layers * sum(i * o for i, o in shape.layer_linears) * estimate.DTYPE_BYTES[setting.dtype]


# Knobs that shrink a phase, in the order the plan tries them: (override key, new value from the recipe).
_KNOBS: dict[str, list[tuple[str, Callable[[RecipeConfig], object]]]] = {
    "sft step": [
        ("model.gradient_checkpointing", lambda r: True),
        ("sft.train.batch_size", lambda r: max(1, r.sft.train.batch_size // 2)),
        ("sft.max_length", lambda r: max(2, r.sft.max_length // 2)),
    ],
    "rm step": [
        ("model.gradient_checkpointing", lambda r: True),
        ("rm.train.batch_size", lambda r: max(1, r.rm.train.batch_size // 2)),
        ("rm.max_length", lambda r: max(2, r.rm.max_length // 2)),
    ],
    "ppo generate": [
        ("ppo.rollout_batch_size", lambda r: max(1, r.ppo.rollout_batch_size // 2)),
        ("ppo.sampling.max_new_tokens", lambda r: max(1, r.ppo.sampling.max_new_tokens // 2)),
    ],
    "ppo score": [("ppo.micro_batch_size", lambda r: max(1, r.ppo.micro_batch_size // 2))],
    "ppo train": [
        ("model.gradient_checkpointing", lambda r: True),
        ("ppo.micro_batch_size", lambda r: max(1, r.ppo.micro_batch_size // 2)),
        ("ppo.ptx.batch_size", lambda r: max(1, r.ppo.ptx.batch_size // 2)),
        ("ppo.sampling.max_new_tokens", lambda r: max(1, r.ppo.sampling.max_new_tokens // 2)),
    ],
    "eval": [
        ("eval.batch_size", lambda r: max(1, r.eval.batch_size // 2)),
        ("eval.max_new_tokens", lambda r: max(1, r.eval.max_new_tokens // 2)),
    ],
}


def _with(recipe: RecipeConfig, key: str, value: object) -> RecipeConfig:
    changed = copy.deepcopy(recipe)
    *path, last = key.split(".")
    target = changed
    for part in path:
        target = getattr(target, part)
    setattr(target, last, value)
    return changed


def plan_recipe(
    recipe: RecipeConfig,
    shape: ModelShape,
    *,
    device: str = "cuda",
    budget: int | None = None,
    responses_per_prompt: int | None = None,
) -> Plan:
    """Predict every phase of `recipe` on `shape`; for a phase over `budget`, the single knobs that bring it under."""
    if device not in ("cuda", "cpu"):
        raise LoraRlhfError(f"--device: {device!r} must be cuda or cpu")
    k = responses_per_prompt or (recipe.demo.responses_per_prompt if recipe.demo.enabled else PAIRWISE_K)
    setting = resolve_setting(recipe, device)
    phases = phase_memories(shape, recipe, setting, k, budget)
    compute = ppo_iteration_compute(shape, recipe.ppo, checkpointing=setting.checkpointing)
    plan = Plan(shape.name, setting, phases, budget, ppo_compute=compute, ppo_advantage=recipe.ppo.advantage)
    if budget is None:
        return plan
    for memory in phases:
        if memory.total <= budget:
            continue
        options = []
        for key, value_of in _KNOBS[memory.name]:
            value = value_of(recipe)
            if _resolve(recipe, key) == value:
                continue  # already there (gradient checkpointing on, a batch of 1)
            changed = _with(recipe, key, value)
            total = next(
                p.total
                for p in phase_memories(shape, changed, resolve_setting(changed, device), k, budget)
                if p.name == memory.name
            )
            options.append((f"{key}={_show(value)}", total))
        plan.advice[memory.name] = options
    return plan


def _resolve(recipe: RecipeConfig, key: str) -> object:
    value: object = recipe
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _show(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def format_plan(plan: Plan) -> str:
    """The plan as a Markdown table in GiB, then a verdict and, for each phase over budget, what brings it under."""
    s = plan.setting
    head = (
        f"memory plan for {plan.model} on {s.device}: {s.quantization} base, {s.dtype} compute, "
        f"gradient checkpointing {'on' if s.checkpointing else 'off'}"
    )
    lines = [
        head,
        "",
        "| phase | base | adapters + heads | grads + AdamW | activations | log-prob chunk | KV cache "
        "| runtime | total |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in plan.phases:
        cells = (p.base, p.adapters, p.trained_state, p.activations, p.logits, p.kv_cache, p.runtime, p.total)
        lines.append(f"| {p.name} | " + " | ".join(f"{c / GiB:.2f}" for c in cells) + " |")
    lines.append("")
    runtime = "0.5 GiB CUDA context + 10% for fragmentation" if s.device == "cuda" else "none (allocator-level figures)"
    lines.append(f"GiB; runtime allowance: {runtime}. Peak: {plan.peak.name}, {plan.peak.total / GiB:.2f} GiB.")
    if plan.ppo_compute is not None:
        lines.append(_compute_line(plan.ppo_compute, plan.ppo_advantage))
    if plan.budget is None:
        return "\n".join(lines)
    if plan.fits:
        lines.append(f"Fits in {plan.budget / GiB:.1f} GiB (headroom {(plan.budget - plan.peak.total) / GiB:.2f} GiB).")
        return "\n".join(lines)
    lines.append(f"Does NOT fit in {plan.budget / GiB:.1f} GiB:")
    for name, options in plan.advice.items():
        total = next(p.total for p in plan.phases if p.name == name)
        fixes = [f"{key} -> {t / GiB:.2f} GiB" + (" (fits)" if t <= plan.budget else "") for key, t in options]
        lines.append(
            f"- {name} needs {total / GiB:.2f} GiB; " + ("; ".join(fixes) if fixes else "no single knob helps")
        )
    return "\n".join(lines)


def _compute_line(compute: IterationCompute, advantage: str) -> str:
    """One PPO iteration's FLOPs by phase, with the passes they count (plan/compute.py)."""
    tera = 1e12
    roles = "policy" if compute.train_roles == 1 else "policy + value"
    return (
        f"One PPO iteration (ppo.advantage {advantage}): {compute.total / tera:.2f} TFLOP at full lengths = "
        f"generate {compute.generate / tera:.2f} + score {compute.score / tera:.2f} ({compute.score_passes} passes) "
        f"+ train {compute.train / tera:.2f} ({roles})."
    )


def parse_size(text: str) -> int:
    """'24GiB', '24GB', '24G' or '24' (GiB) -> bytes; a one-line error otherwise."""
    units = {"gib": GiB, "gb": 10**9, "g": GiB, "mib": 1024**2, "mb": 10**6, "": GiB}
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("gimb")
    unit = raw[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or not value > 0:
        raise LoraRlhfError(f"--gpu-memory: {text!r} is not a size like 24GiB, 24GB or 80")
    return int(value * units[unit])
