"""Issue 27's comparison on IFEval: the policies trained from one run's sft and rankings, side by side.

    python scripts/ifeval_methods.py --run runs/ifeval \\
        --model sft=runs/ifeval/adapters/sft,runs/ifeval/ifeval/sft.jsonl \\
        --model rloo=runs/ifeval/adapters/policy,runs/ifeval/ifeval/ppo.jsonl \\
        --model dpo_pl=runs/ifeval_dpo/adapters/dpo,runs/ifeval_dpo/ifeval/dpo.jsonl \\
        --output docs/ifeval/methods.md

Each model is an adapter folder and the IFEval answers it wrote (`lora-rlhf eval --benchmark ifeval`, or the
pipeline's eval: greedy, the recipe's token budget). Per model: IFEval's four accuracies, prompt-level loose
against the reference with a paired 95% interval, the win rate against it (a prompt that one passes and the other
fails is a win or a loss, the rest ties, judged loose), the exact KL to the reference summed along the model's own
IFEval answers (eval/kl.py, mean over prompts) and the held-out LM loss on the run's lm_text (the alignment tax).
Training cost (wall time, peak memory) is not in the adapters: the stage logs hold it, and the note states it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lora_rlhf.config.recipe import load_recipe
from lora_rlhf.data.batching import pad_left
from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.eval.compare import win_rate
from lora_rlhf.eval.ifeval import read_responses, rendered_prompts
from lora_rlhf.eval.kl import sequence_kl
from lora_rlhf.eval.lm_loss import load_texts, role_lm_loss
from lora_rlhf.eval.stats import bootstrap_ci, paired_diff_ci
from lora_rlhf.ifeval import benchmark
from lora_rlhf.inference.loading import base_config_from_run
from lora_rlhf.io import atomic_file
from lora_rlhf.models.roles import RoleStack


def parse_model(text: str) -> tuple[str, Path, Path]:
    name, _, rest = text.partition("=")
    adapter, _, answers = rest.partition(",")
    if not (name and adapter and answers):
        raise argparse.ArgumentTypeError(f"--model {text!r}: expected NAME=ADAPTER_DIR,ANSWERS.jsonl")
    return name, Path(adapter), Path(answers)


@torch.no_grad()
def answers_kl(
    stack: RoleStack, role: str, reference: str, rendered: list[str], answers: list[str], batch: int
) -> float:
    """Mean over prompts of KL(role || reference) summed along `role`'s own answers to the `rendered` prompts."""
    tokenizer, totals = stack.tokenizer, []
    for begin in tqdm(range(0, len(rendered), batch), desc=f"KL({role} || {reference})", unit="batch"):
        rows, masks = [], []
        for prompt, answer in zip(rendered[begin : begin + batch], answers[begin : begin + batch]):
            head = tokenizer(prompt, add_special_tokens=False).input_ids  # as eval/responses.py encodes it
            tail = tokenizer(answer, add_special_tokens=False).input_ids
            rows.append(head + tail)
            masks.append([0] * len(head) + [1] * len(tail))
        ids, mask = pad_left(rows, tokenizer.pad_token_id)
        response, _ = pad_left(masks, 0)
        kl = sequence_kl(stack, role, reference, ids.to(stack.device), mask.to(stack.device), response.to(stack.device))
        totals += kl.tolist()
    return sum(totals) / len(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="the run whose base (recipe.yaml) and lm_text to use")
    parser.add_argument("--model", type=parse_model, action="append", required=True, help="NAME=ADAPTER,ANSWERS")
    parser.add_argument("--reference", default="sft", help="the --model every other one is compared with")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--kl-prompts", type=int, default=541, help="the KL on IFEval's first N prompts (~1.2 s per answer on 2 cores)"
    )
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()

    models = {name: (adapter, answers) for name, adapter, answers in args.model}
    if args.reference not in models:
        raise SystemExit(f"--reference {args.reference!r} is none of the --model names ({', '.join(models)})")
    prompts = benchmark.load_prompts(None)
    answers = {name: read_responses(path, prompts) for name, (_, path) in models.items()}
    verdicts = {name: benchmark.score(prompts, texts) for name, texts in answers.items()}
    loose = {name: benchmark.prompt_level(v, "loose") for name, v in verdicts.items()}

    stack = RoleStack.load(base_config_from_run(args.run))
    # The prompts as the answers were generated: the run's chat template and IFEval system turn.
    system_prompt = load_recipe(str(args.run / "recipe.yaml"), []).eval.ifeval.system_prompt
    rendered = rendered_prompts(stack.tokenizer, prompts[: args.kl_prompts], system_prompt)
    for name, (adapter, _) in models.items():
        stack.load_role(name, adapter)
    lm_text = load_texts(DatasetSpec(path=str(args.run / "data" / "lm_text.jsonl")), stack.tokenizer, 256)
    ref = args.reference
    lines = [
        f"IFEval, 541 prompts, greedy; reference: {ref}. Brackets: 95% bootstrap intervals (paired over prompts). "
        f"KL on the first {min(args.kl_prompts, len(prompts))} prompts; LM loss on {len(lm_text)} rows of lm_text.",
        "",
        f"| model | prompt loose [95% CI] | prompt strict | inst. loose | inst. strict | loose − {ref} [95% CI] "
        f"| win rate vs {ref} | KL to {ref} (nats, along its answers) | LM loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    with stack.evaluating():
        for name in models:
            acc = benchmark.accuracies(verdicts[name])
            low, high = bootstrap_ci(loose[name])
            if name == ref:
                diff, wins, kl = "—", "—", "0"
            else:
                d_low, d_high = paired_diff_ci(loose[name], loose[ref])
                d = sum(loose[name]) / len(prompts) - sum(loose[ref]) / len(prompts)
                diff = f"{100 * d:+.1f} [{100 * d_low:+.1f}, {100 * d_high:+.1f}]"
                wins = f"{win_rate(loose[name], loose[ref]):.3f}"
                kl = f"{answers_kl(stack, name, ref, rendered, answers[name], args.batch_size):.2f}"
            lm = role_lm_loss(stack, name, lm_text, args.batch_size)
            lines.append(
                f"| {name} | {100 * acc['prompt_loose']:.1f} [{100 * low:.1f}, {100 * high:.1f}] "
                f"| {100 * acc['prompt_strict']:.1f} | {100 * acc['instruction_loose']:.1f} "
                f"| {100 * acc['instruction_strict']:.1f} "
                f"| {diff} | {wins} | {kl} | {lm:.3f} |"
            )
            print(lines[-1], flush=True)
    if args.output:
        with atomic_file(args.output) as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
