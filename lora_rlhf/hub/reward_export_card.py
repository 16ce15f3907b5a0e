"""The model card of an exported reward model (`lora-rlhf export-reward`): how to score with transformers, the
text-classification pipeline, PEFT and TRL's GRPO/RLOO trainers.

Its Python blocks are run as they stand by tests/test_export_reward.py (only MODEL is pointed at the folder).
"""

from __future__ import annotations

from typing import Any

from lora_rlhf.hub.card import hub_base_model

# What the card's code loads the model from; tests put the exported folder in its place.
LOCAL_MODEL = 'MODEL = "path/to/this/folder"  # the folder holding this README.md'

_SCORING = '''\
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

{model_line}
tokenizer = AutoTokenizer.from_pretrained(MODEL)  # pad token {pad!r}, padding on the right
model = AutoModelForSequenceClassification.from_pretrained(MODEL, dtype=torch.float32).eval()
# 0.0 unless the head's bias could not be stored in the weights (see above): add it to get lora_rlhf's scores.
OFFSET = getattr(model.config, "lora_rlhf_reward_offset", 0.0)


def reward_text(prompt, response):
    """What the reward model was trained on: the prompt (chat template, if any), the response, then EOS."""
    if tokenizer.chat_template:
        messages = [{{"role": "user", "content": prompt}}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt + response + tokenizer.eos_token


texts = [reward_text("Reverse the words: hello world", "world hello"), reward_text("Say hi", "hi")]
batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
with torch.no_grad():
    rewards = model(**batch).logits[:, 0] + OFFSET  # (B,) read at each row's last non-pad token (the EOS)

# The same scores from the text-classification pipeline ("none": the raw score, no sigmoid).
scorer = pipeline("text-classification", model=MODEL, function_to_apply="none")
piped = [out["score"] + OFFSET for out in scorer(texts, add_special_tokens=False, batch_size=len(texts))]
print(rewards.tolist(), piped)
'''

_LEFT_PADDING = (
    "Right padding needs nothing more. For a batch padded on the **left**, also pass "
    "`position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)`: models with absolute positions (GPT-2) "
    "would otherwise encode a padded row as if it started later; rotary ones (Llama, Qwen2) give the same "
    "scores either way, up to float rounding."
)

_PEFT = """\
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

BASE = "{base}"
tokenizer = AutoTokenizer.from_pretrained(f"{{MODEL}}/{sub}")
base = AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=1, pad_token_id=tokenizer.pad_token_id)
model = PeftModel.from_pretrained(base, f"{{MODEL}}/{sub}").eval()  # scores as the merged model does
"""

_TRL = """\
from trl import GRPOConfig, GRPOTrainer

# `policy` is the model to train, `prompts` a datasets.Dataset with a "prompt" column.
trainer = GRPOTrainer(model=policy, reward_funcs=MODEL, args=GRPOConfig(output_dir="grpo"), train_dataset=prompts)
"""

_TRL_EOS = '''\
def reward_with_eos(prompts, completions, **kwargs):
    """TRL's reward-function protocol, scoring prompt + completion + EOS as the reward model was trained."""
    texts = [p + c + tokenizer.eos_token for p, c in zip(prompts, completions)]
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
    with torch.no_grad():
        return (model(**batch).logits[:, 0] + OFFSET).tolist()
'''


def _bias_line(bias: Any) -> str:
    if bias.where == "none":
        return "The reward head has no bias (it is 0), so `score` alone is the reward head."
    if bias.where == "dropped":
        return (
            f"The reward head's bias ({bias.value:.6g}) is not in these weights (this class's `score` layer has no "
            "bias and no final LayerNorm bias can carry it, e.g. an RMSNorm base, or the export was asked to drop "
            "it), so **these scores are lower by "
            f"{bias.value:.6g} than lora_rlhf's**; `config.lora_rlhf_reward_offset` holds it. A constant changes "
            "no ranking and no GRPO or RLOO advantage (both subtract a per-prompt mean)."
        )
    return (
        f"The reward head's bias ({bias.value:.6g}) is folded exactly into `{bias.where}` (the layer before "
        "`score` in this class), so the scores are lora_rlhf's."
    )


def reward_export_card(
    *,
    base_model: str,
    architecture: str,
    dtype: str,
    bias: Any,
    pad_token: str,
    peft_subfolder: str | None,
    model_line: str = LOCAL_MODEL,
) -> str:
    """README.md of an exported reward model; `bias` is the export's BiasPlacement (where, value).

    `base_model` as the run names it: a built-in name becomes its Hub id, a local folder is left out of the
    front matter (the Hub indexes ids only).
    """
    hub_id = hub_base_model(base_model)
    base_model = hub_id or base_model
    lines = [
        "---",
        *([f"base_model: {hub_id}"] if hub_id else []),
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags: [reward-model, rlhf, instructgpt, lora_rlhf]",
        "---",
        "",
        f"# Reward model ({architecture})",
        "",
        f"The reward role of a lora_rlhf run on `{base_model}` (InstructGPT step 2), exported by "
        "`lora-rlhf export-reward` as a standard checkpoint: the reward LoRA merged into the base (reloaded "
        f"unquantized, even if the run trained on a 4-bit base), weights in {dtype}, and the scalar head as the "
        "one-label `score` layer.",
        "",
        _bias_line(bias),
        "",
        "## Scoring",
        "",
        "A reward is read at each row's last non-pad token, and the model was trained on the prompt (through the "
        f"chat template, if the tokenizer has one), the response and EOS. The pad token is `{pad_token}` (never "
        "EOS, which ends every scored row), padding on the right.",
        "",
        "```python",
        _SCORING.format(model_line=model_line, pad=pad_token).rstrip("\n"),
        "```",
        "",
        _LEFT_PADDING,
        "",
    ]
    if peft_subfolder:
        lines += [
            "## As a PEFT adapter",
            "",
            f"`{peft_subfolder}/` holds the same model as a PEFT adapter of task type SEQ_CLS on the unmerged "
            "base: the reward LoRA, with the head (`score`) and any layer holding its bias in `modules_to_save`.",
            "",
            "```python",
            _PEFT.format(base=base_model, sub=peft_subfolder).rstrip("\n"),
            "```",
            "",
        ]
    lines += _trl_section()
    return "\n".join(lines)


def _trl_section() -> list[str]:
    return [
        "## As the reward model of TRL's GRPO or RLOO",
        "",
        "```python",
        _TRL.rstrip("\n"),
        "```",
        "",
        "TRL tokenizes `prompt + completion` (or, for conversational data, the chat template over both) without "
        "special tokens, pads on the right and reads `logits[:, 0]` — this model's score at the last token. Two "
        "differences from lora_rlhf's scoring: the prompt is the dataset's text as it stands (render the chat "
        "template into standard-format prompts yourself), and completions are decoded without special tokens, "
        "so the EOS the model was trained to score at is missing. To score exactly as lora_rlhf does, pass a "
        "reward function instead (using `tokenizer`, `model` and `OFFSET` from above):",
        "",
        "```python",
        _TRL_EOS.rstrip("\n"),
        "```",
        "",
    ]
