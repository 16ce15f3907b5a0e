"""The memory plan against measured peaks at the real 7-8B shapes, on the CPU, with random NF4 weights (issue 30).

    OMP_NUM_THREADS=1 python scripts/real_shapes.py --model-config scripts/model_configs/llama-3.1-8b.json
        [--recipe recipes/llama3.1-8b-hh.yaml] [--json out.json] [key=value ...]
    OMP_NUM_THREADS=1 python scripts/real_shapes.py --rm-demo [--json out.json]

The first form builds the config's model without ever holding its 16-bit weights
(lora_rlhf/testing/random_quantized.py: NF4 decoder linears, the rest in the recipe's compute dtype), prepares
it as the loader does (`prepare_for_training`), puts the four roles on it stage by stage and runs one step of
every phase the plan has, with the library's own functions, at the reduced sizes of `REDUCED` (+ overrides):

    sft step      sft_loss + backward + AdamW step (sft role, its optimizer primed)
    rm step       rm_loss on one pair + backward + AdamW step (reward role + head, copied from sft)
    ppo generate  rollout.sample from the policy (policy and value copied, both optimizers primed)
    ppo score     rollout.score: reference, value and reward in one stacked pass
    ppo train     one micro-batch as a minibatch (train_on_rollout): policy and value backward, both AdamW steps
    eval          rollout.sample at the eval sizes (value role and optimizers gone, as in `lora-rlhf eval`)

Optimizers are primed with one zero-gradient step so AdamW's moments exist as they do from the second step on
(the plan counts them in every training phase). Measured = the parameters, buffers, quantization state and
optimizer state held when the phase starts (plan/measure.py `resident_bytes`) + the phase's allocated-bytes peak
above its start (torch.profiler's memory timeline: the method of scripts/validate_plan.py); RSS is the process's
resident set sampled every 5 ms during the phase (it also holds the interpreter, libraries, the profiler's own
records and the heap glibc keeps). Seconds are wall-clock while other work shares the machine: no speed claim.

`--rm-demo` measures the reward-model step on hh-rlhf-like rows (8 pairs, a prompt of a few hundred tokens and
two responses, no gradient checkpointing) on the demo model as the demo recipe loads it on the CPU, then with the
knob the plan names, and prints the plan's advice for a budget between the two.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from lora_rlhf.config.recipe import RecipeConfig, load_recipe
from lora_rlhf.data.demonstrations import IGNORE_INDEX
from lora_rlhf.data.rankings import RankingExample
from lora_rlhf.models.base import prepare_for_training
from lora_rlhf.models.roles import RoleStack
from lora_rlhf.plan import plan_recipe
from lora_rlhf.plan.estimate import GiB
from lora_rlhf.plan.measure import allocated_peak, resident_bytes
from lora_rlhf.plan.shapes import ModelShape, model_shape

ROOT = Path(__file__).resolve().parents[1]
# model config -> the shipped recipe of that model
RECIPES = {
    "llama-3.1-8b.json": "llama3.1-8b-hh.yaml",
    "mistral-7b-v0.3.json": "mistral-7b-hh.yaml",
    "qwen2.5-7b.json": "qwen2.5-7b-hh.yaml",
}
# Sizes that run every phase of a 7-8B model on 2 cores in minutes. Checkpointing off: the recipes' setting
# (on) leaves activations of a few MB beside a ~7 GiB base at these lengths, so nothing of the activation
# arithmetic would be tested. PPO-ptx off (one more forward + backward) and decoding without the dequantized copy
# (the whole base in bf16, ~13 GiB, does not fit beside it here; the library's own check refuses it too).
REDUCED = [
    "model.gradient_checkpointing=false",
    "model.dequantized_decoding=false",
    "sft.max_length=64",
    "sft.train.batch_size=2",
    "rm.max_length=64",
    "rm.train.batch_size=1",
    "ppo.max_prompt_length=48",
    "ppo.sampling.max_new_tokens=4",
    "ppo.rollout_batch_size=4",
    "ppo.mini_batch_size=4",
    "ppo.micro_batch_size=2",
    "eval.batch_size=4",
    "eval.max_new_tokens=4",
]
# Both size sets: the eval phase is one generate call, and the ptx term is not run (no demonstration stream).
COMMON = ["ppo.ptx.coef=0", "eval.best_of_n=0"]
RM_PROMPT = 16  # prompt tokens of the rm step's pair (its two responses fill rm.max_length)


@dataclasses.dataclass
class Row:
    phase: str
    predicted: int  # bytes, the plan
    measured: int  # bytes, resident at the start + allocated peak
    rss: int  # bytes, peak resident set during the phase
    seconds: float

    @property
    def ratio(self) -> float:
        return self.predicted / self.measured


class RssSampler:
    """The process's resident set, sampled every 5 ms on a thread; `window()` restarts the running peak."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.now())

    def window(self) -> None:
        self.peak = self.now()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def measured(rows: list[Row], name: str, predicted: int, stack: RoleStack, optimizers, rss: RssSampler) -> Iterator:
    """Run the block as phase `name` and append its Row (see the module docstring for what is counted)."""
    held = resident_bytes(stack.base_model, stack.heads, optimizers=tuple(optimizers))
    rss.window()
    start = time.perf_counter()
    with allocated_peak(stack.device) as peak:
        yield
    seconds = time.perf_counter() - start
    rows.append(Row(name, predicted, held + peak.bytes, max(rss.peak, rss.now()), seconds))
    logging.getLogger(__name__).warning("%s: %s", name, _format_row(rows[-1]))


def prime(optimizer: torch.optim.Optimizer) -> None:
    """One step on zero gradients: AdamW's moments now exist (all zero), the weights are unchanged but for decay."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _ids(rows: int, tokens: int, vocab: int) -> torch.Tensor:
    return torch.randint(16, min(vocab, 30000), (rows, tokens))


def build_stack(config_path: Path, recipe: RecipeConfig) -> RoleStack:
    from transformers import AutoConfig

    from lora_rlhf.models.tiny import tiny_tokenizer
    from lora_rlhf.testing.random_quantized import random_nf4_model

    config = AutoConfig.from_pretrained(str(config_path))
    dtype = getattr(torch, recipe.model.compute_dtype)
    model = random_nf4_model(config, compute_dtype=dtype, double_quant=recipe.model.double_quant)
    model = model.to(recipe.model.resolved_device())
    model = prepare_for_training(model, quantized=True, gradient_checkpointing=recipe.model.gradient_checkpointing)
    return RoleStack(
        model, tiny_tokenizer(384), base_name=config_path.stem, dequantized_decoding=recipe.model.dequantized_decoding
    )


def run_stages(stack: RoleStack, recipe: RecipeConfig, predicted: dict[str, int]) -> list[Row]:
    """One step of every phase, roles added as the stages add them (see the module docstring)."""
    from lora_rlhf.ppo import optimize
    from lora_rlhf.ppo.rollout import EncodedPrompt, sample, score
    from lora_rlhf.ppo.trainer import setup_roles
    from lora_rlhf.rm.trainer import ranking_collator, rm_loss
    from lora_rlhf.sft.loss import sft_loss
    from lora_rlhf.train.loop import make_accelerator

    rows: list[Row] = []
    rss = RssSampler()
    vocab = stack.base_model.get_input_embeddings().weight.shape[0]
    stack.add_role("sft", recipe.sft.lora)
    stack.set_trainable("sft")
    opt = torch.optim.AdamW(stack.role_parameters("sft"), lr=1e-5)
    prime(opt)
    ids = _ids(recipe.sft.train.batch_size, recipe.sft.max_length, vocab)
    labels = ids.clone()
    labels[:, : ids.shape[1] // 2] = IGNORE_INDEX
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    batch = {k: v.to(stack.device) for k, v in batch.items()}
    # backward inside `use`: under checkpointing the recomputed forward runs under the active adapter (roles.py)
    with stack.training(), stack.use("sft"), measured(rows, "sft step", predicted["sft step"], stack, [opt], rss):
        sft_loss(stack, batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    del opt

    stack.copy_role("sft", "reward")
    stack.set_trainable("reward")
    opt = torch.optim.AdamW(stack.role_parameters("reward"), lr=1e-5)
    prime(opt)
    response = recipe.rm.max_length - RM_PROMPT
    pair = RankingExample(_ids(1, RM_PROMPT, vocab)[0].tolist(), _ids(2, response, vocab).tolist(), [0, 1])
    batch = ranking_collator(stack, recipe.rm.share_prompts)([pair] * recipe.rm.train.batch_size)
    batch = {k: v.to(stack.device) for k, v in batch.items()}
    with stack.training(), stack.use("reward"), measured(rows, "rm step", predicted["rm step"], stack, [opt], rss):
        rm_loss(stack, batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    del opt, batch

    ppo = recipe.ppo
    setup_roles(stack, ppo)
    stack.set_trainable("policy", "value")
    opt = optimize.build_optimizers(stack, ppo.optim, ppo.steps, make_accelerator("auto", stack.device))
    for optimizer in opt.roles().values():
        prime(optimizer)
    prompts = [EncodedPrompt(p.tolist(), "") for p in _ids(ppo.rollout_sequences, ppo.max_prompt_length, vocab)]
    optimizers = list(opt.roles().values())
    with stack.training(dropout=False):
        with measured(rows, "ppo generate", predicted["ppo generate"], stack, optimizers, rss):
            sampled = sample(stack, prompts, ppo.sampling)
        with measured(rows, "ppo score", predicted["ppo score"], stack, optimizers, rss):
            scored = score(
                stack,
                sampled.input_ids,
                sampled.attention_mask,
                sampled.prompt_width,
                temperature=ppo.sampling.temperature,
                micro_batch_size=ppo.micro_batch_size,
                with_policy=not ppo.sampling.logprobs_from_generation,
            )
        rollout = _rollout(sampled, scored, ppo)
        # One micro-batch as a whole minibatch: one policy backward, one value backward, one step of each role.
        part = rollout.select(torch.arange(ppo.micro_batch_size))
        one = dataclasses.replace(ppo, mini_batch_size=ppo.micro_batch_size, ppo_epochs=1)
        with measured(rows, "ppo train", predicted["ppo train"], stack, optimizers, rss):
            optimize.train_on_rollout(stack, part, opt, one, None, 1, ppo.rewards.kl_coef)
    del opt, optimizers, rollout, part, sampled, scored

    stack.remove_role("value")
    ev = recipe.eval
    prompts = [EncodedPrompt(p.tolist(), "") for p in _ids(ev.batch_size, ppo.max_prompt_length, vocab)]
    sampling = dataclasses.replace(ppo.sampling, max_new_tokens=ev.max_new_tokens)
    with stack.evaluating(), measured(rows, "eval", predicted["eval"], stack, [], rss):
        sample(stack, prompts, sampling)
    rss.close()
    return rows


def _rollout(sampled, scored: dict, ppo):
    from lora_rlhf.ppo import optimize
    from lora_rlhf.ppo.rewards import RunningMoments
    from lora_rlhf.ppo.rollout import Rollout

    if sampled.logprobs is not None:
        scored["logprobs"], scored["entropy"] = sampled.logprobs.float(), sampled.entropy.float()
    rows = len(sampled.input_ids)
    rollout = Rollout(
        input_ids=sampled.input_ids,
        attention_mask=sampled.attention_mask,
        response_mask=sampled.response_mask.float(),
        prompt_width=sampled.prompt_width,
        prompts=[""] * rows,
        responses=[""] * rows,
        finished=torch.ones(rows, dtype=torch.bool),
        **scored,
    )
    optimize.add_advantages(rollout, ppo.rewards.kl_coef, ppo.rewards, RunningMoments())
    return rollout


def predictions(recipe: RecipeConfig, shape: ModelShape, k: int = 2) -> dict[str, int]:
    """Each phase's predicted tensor bytes: the plan's total without its CUDA runtime allowance (context,
    fragmentation), which no allocated-bytes figure holds."""
    device = recipe.model.resolved_device().type
    plan = plan_recipe(recipe, shape, device="cuda" if device == "cuda" else "cpu", responses_per_prompt=k)
    return {p.name: p.total - p.runtime for p in plan.phases}


def _format_row(row: Row) -> str:
    return (
        f"| {row.phase} | {row.predicted / GiB:.2f} | {row.measured / GiB:.2f} | {row.rss / GiB:.2f} "
        f"| {row.ratio:.2f} | {row.seconds:.0f} |"
    )


def table(title: str, rows: list[Row]) -> str:
    lines = [
        f"{title}",
        "",
        "| phase | predicted GiB | measured GiB (allocator) | peak RSS GiB | predicted / measured | s (contended) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    return "\n".join(lines + [_format_row(r) for r in rows])


def real_shapes(
    config_path: Path, recipe_path: Path, overrides: list[str], device: str = "cpu", sizes: str = "reduced"
) -> tuple[str, list[Row]]:
    chosen = REDUCED if sizes == "reduced" else []
    recipe = load_recipe(recipe_path, [f"model.device={device}", *chosen, *COMMON, *overrides])
    shape = model_shape(str(config_path))
    start = time.perf_counter()
    stack = build_stack(config_path, recipe)
    built = time.perf_counter() - start
    rows = run_stages(stack, recipe, predictions(recipe, shape))
    title = (
        f"{config_path.name} ({shape.params / 1e9:.2f}B parameters) with {recipe_path.name}, {sizes} sizes, on "
        f"{device}: random NF4, {recipe.model.compute_dtype} compute, built in {built:.0f} s"
    )
    return title, rows


def replan(saved: Path, config_path: Path, recipe_path: Path, overrides: list[str], device: str, sizes: str) -> str:
    """A saved run's table with the predictions of the plan as it is now (after a fix to lora_rlhf/plan/)."""
    chosen = REDUCED if sizes == "reduced" else []
    recipe = load_recipe(recipe_path, [f"model.device={device}", *chosen, *COMMON, *overrides])
    predicted = predictions(recipe, model_shape(str(config_path)))
    data = json.loads(saved.read_text())
    rows = [Row(**{**row, "predicted": predicted[row["phase"]]}) for row in data["rows"]]
    return table(data["title"] + " (predictions of the current plan)", rows)


def rm_demo(overrides: list[str]) -> tuple[str, list[Row], str]:
    """The reward-model step on hh-rlhf-like rows on the demo model (see the module docstring)."""
    from lora_rlhf.models.names import resolve_model_name
    from lora_rlhf.plan.phases import format_plan
    from lora_rlhf.rm.trainer import ranking_collator, rm_loss

    prompt, responses = 220, (96, 72)  # hh-rlhf: a multi-turn prefix, then two assistant turns
    base = ["model.device=cpu", "rm.train.batch_size=8", f"rm.max_length={prompt + max(responses)}", *overrides]
    folder = resolve_model_name("demo:smollm2")
    rows: list[Row] = []
    advice = ""
    for checkpointing in (False, True):
        recipe = load_recipe(None, [*base, f"model.gradient_checkpointing={str(checkpointing).lower()}"])
        shape = model_shape(folder)
        m = recipe.model
        stack = RoleStack.load(dataclasses.replace(m, name_or_path=folder))
        stack.add_role("sft", recipe.sft.lora)
        stack.copy_role("sft", "reward")
        stack.set_trainable("reward")
        opt = torch.optim.AdamW(stack.role_parameters("reward"), lr=1e-5)
        prime(opt)
        vocab = stack.base_model.get_input_embeddings().weight.shape[0]
        pairs = [
            RankingExample(
                _ids(1, prompt, vocab)[0].tolist(), [_ids(1, n, vocab)[0].tolist() for n in responses], [0, 1]
            )
            for _ in range(recipe.rm.train.batch_size)
        ]
        batch = ranking_collator(stack, recipe.rm.share_prompts)(pairs)
        rss = RssSampler()
        predicted = predictions(recipe, shape)["rm step"]
        name = f"rm step, checkpointing {'on' if checkpointing else 'off'}"
        with stack.training(), stack.use("reward"), measured(rows, name, predicted, stack, [opt], rss):
            rm_loss(stack, batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        rss.close()
        if not checkpointing:
            budget = int(rows[-1].predicted * 0.6)
            plan = plan_recipe(recipe, shape, device="cpu", budget=budget, responses_per_prompt=2)
            advice = "\n".join(
                line for line in format_plan(plan).splitlines() if line.startswith(("Does NOT", "- rm step"))
            )
        del stack, opt, batch
    title = (
        f"demo model ({m.quantization} on the CPU -> fp32), 8 pairs of a {prompt}-token prompt and "
        f"{responses[0]}/{responses[1]}-token responses, rm.max_length {prompt + max(responses)}"
    )
    return title, rows, advice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-config", type=Path, help="a config.json (scripts/model_configs/)")
    parser.add_argument("--recipe", type=Path, help="default: the shipped recipe of that model")
    parser.add_argument("--rm-demo", action="store_true", help="the hh-rlhf-like reward-model step on the demo model")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the model is built on the CPU, then moved)")
    parser.add_argument(
        "--sizes", choices=["reduced", "recipe"], default="reduced", help="REDUCED, or the recipe's own sizes"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--replan", type=Path, help="reprint a --json file's rows with the current plan's predictions")
    parser.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    if args.rm_demo:
        title, rows, advice = rm_demo(args.overrides)
        print(table(title, rows) + "\n\n" + advice)
    else:
        if args.model_config is None:
            parser.error("--model-config or --rm-demo is required")
        recipe = args.recipe or ROOT / "recipes" / RECIPES[args.model_config.name]
        if args.replan:
            print(replan(args.replan, args.model_config, recipe, args.overrides, args.device, args.sizes))
            return
        title, rows = real_shapes(args.model_config, recipe, args.overrides, args.device, args.sizes)
        print(table(title, rows))
    if args.json:
        args.json.write_text(json.dumps({"title": title, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
