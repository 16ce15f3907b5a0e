"""Write the prompts scripts/bench_ppo.py uses to a JSONL file the TRL peer (another venv) can read.

    .venv/bin/python scripts/trl_peer/export_prompts.py --count 48 --out runs/trl_peer/prompts.jsonl

Same as bench_ppo.py (`lora_rlhf.testing.bench.demo_prompts`): `sample_tasks(count, seed=3)`, rendered with
the demo tokenizer's chat template.
Each line: {"text": user words, "prompt": rendered prompt, "input_ids": its token ids}; the peer feeds the
ids as they are, so both sides encode exactly the same tokens. Also writes the model folder to
`<out>.model` so the peer loads the same local HF copy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lora_rlhf.data.chat import render_prompt
from lora_rlhf.demo.tasks import sample_tasks
from lora_rlhf.testing.bench import default_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--out", default="runs/trl_peer/prompts.jsonl")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    model = default_model()
    tokenizer = AutoTokenizer.from_pretrained(model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        for task in sample_tasks(args.count, seed=3):
            prompt = render_prompt(tokenizer, task.prompt)
            ids = tokenizer(prompt, add_special_tokens=False).input_ids
            handle.write(json.dumps({"text": task.prompt, "prompt": prompt, "input_ids": ids}) + "\n")
    Path(str(out) + ".model").write_text(model + "\n")
    print(f"{args.count} prompts -> {out}; model {model}")


if __name__ == "__main__":
    main()
