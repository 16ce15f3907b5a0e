"""The one copy of the code that scores with a reward or value adapter folder without lora_rlhf (card lines).

Both the card written beside a saved adapter (models/adapter_io.py) and the published card (lora_rlhf.hub.card) carry
it, and tests/test_reward_card.py runs that very text against `forward.rewards` / `forward.values` (models/forward.py).
"""

from __future__ import annotations

# What a local card's code loads the adapter from; tests put the saved folder in its place.
LOCAL_ADAPTER = 'ADAPTER = "path/to/this/folder"  # the folder holding this README.md'

_HEAD_TEXT = {
    "reward": (
        "## Scoring without lora_rlhf\n\n"
        "The reward is `head.safetensors` applied to the backbone's last hidden state at each row's last "
        "non-pad token (`lora-rlhf rm` set its bias so the demonstrations score 0 on average). The input is "
        "the prompt (through the chat template, if the tokenizer has one), the response and EOS.\n\n"
        'As a standard checkpoint — `AutoModelForSequenceClassification`, `pipeline("text-classification", '
        'function_to_apply="none")`, or the `reward_funcs` of TRL\'s GRPO/RLOO trainers — export it with '
        "`lora-rlhf export-reward RUN_DIR -o OUT` (add `--peft-adapter` for a SEQ_CLS PEFT adapter too); the "
        "exported folder's card shows each way to load it (docs/reward_export.md)."
    ),
    "value": (
        "## Values without lora_rlhf\n\n"
        "The value of the state ending at each position is `head.safetensors` applied to the backbone's "
        "last hidden state there."
    ),
}
_HEAD_DETAILS = (
    "The head's keys are `weight` (1, hidden) and `bias` (1,) of a float32 `Linear(hidden, 1)`; the hidden "
    "state is the backbone's `last_hidden_state` (after the final norm, without the LM head). Pad on the "
    "left and give `position_ids = attention_mask.cumsum(-1) - 1` (clamped at 0): without them a model with "
    "absolute positions (GPT-2) encodes a padded row as if it started later. This code reproduces "
    "`lora_rlhf.models.forward.{method}` (load the base as the run did, e.g. in 4-bit, for its exact figures):"
)

_HEAD_CODE = '''\
tokenizer = AutoTokenizer.from_pretrained(BASE, padding_side="left")
tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token  # padding is masked out: any token will do
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), ADAPTER).eval()
# The transformer under the LM head, with the LoRA layers in place (GPT-2's .transformer, Llama's .model).
backbone = model.get_base_model().base_model
weights = load_file(f"{ADAPTER}/head.safetensors")  # "weight" (1, hidden), "bias" (1,)
head = torch.nn.Linear(weights["weight"].shape[1], 1)
head.load_state_dict(weights)


def hidden_states(input_ids, attention_mask):
    """(B, T) ids and mask, padded on the left -> (B, T, H) last hidden states (after the final norm)."""
    # Positions count real tokens only, so a left-padded row is encoded as if it were unpadded.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state


def encode(prompt, response):
    """Token ids as lora_rlhf builds them: the prompt (chat template, if any), the response, then EOS."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    return ids + tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
'''

_HEAD_READ = {
    "reward": '''

@torch.no_grad()
def rewards(input_ids, attention_mask):
    """(B, T) ids and mask -> (B,) scores, read at each row's last non-pad token."""
    scores = head(hidden_states(input_ids, attention_mask).float()).squeeze(-1)  # (B, T)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask * positions).argmax(-1)
    return scores.gather(1, last[:, None]).squeeze(1)


pairs = [("Reverse the words: hello world", "world hello"), ("Say hi", "hi")]
batch = tokenizer.pad({"input_ids": [encode(p, r) for p, r in pairs]}, return_tensors="pt")
print(rewards(batch["input_ids"], batch["attention_mask"]))
''',
    "value": '''

@torch.no_grad()
def values(input_ids, attention_mask):
    """(B, T) ids and mask -> (B, T) value of the state ending at each position (pad positions mean nothing)."""
    return head(hidden_states(input_ids, attention_mask).float()).squeeze(-1)


pairs = [("Reverse the words: hello world", "world hello"), ("Say hi", "hi")]
batch = tokenizer.pad({"input_ids": [encode(p, r) for p, r in pairs]}, return_tensors="pt")
print(values(batch["input_ids"], batch["attention_mask"]))
''',
}


def hub_adapter(repo_id: str, subfolder: str | None) -> str:
    """The line of `head_usage` that fetches a published adapter folder (head.safetensors included)."""
    if not subfolder:
        return f'ADAPTER = snapshot_download("{repo_id}")'
    return f'ADAPTER = snapshot_download("{repo_id}", allow_patterns="{subfolder}/*") + "/{subfolder}"'


def head_usage(kind: str, base_model: str, adapter_line: str = LOCAL_ADAPTER) -> list[str]:
    """Card lines: how the `kind` head scores, and Python (transformers, peft, safetensors, torch) that does it.

    `adapter_line` assigns ADAPTER, the adapter folder: LOCAL_ADAPTER, or `hub_adapter(...)` when published.
    """
    if kind not in _HEAD_READ:
        raise ValueError(f"head kind must be one of {sorted(_HEAD_READ)}, not {kind!r}")
    imports = [
        "import torch",
        "from peft import PeftModel",
        "from safetensors.torch import load_file",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
    ]
    if "snapshot_download(" in adapter_line:
        imports.insert(1, "from huggingface_hub import snapshot_download")
    code = "\n".join([*imports, "", f'BASE = "{base_model}"', adapter_line, "", _HEAD_CODE + _HEAD_READ[kind]])
    details = _HEAD_DETAILS.format(method="rewards" if kind == "reward" else "values")
    return [_HEAD_TEXT[kind], "", details, "", "```python", code.rstrip("\n"), "```", ""]
