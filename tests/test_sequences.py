"""Stop masks and sampling options in one place (models/sequences.py), used by eval, rollouts and inference.

Eval must sample from the distribution the KL and the log-probs are measured on, and stop where rollouts
and inference stop (issue 11).
"""

from __future__ import annotations

import pytest
import torch

from lora_rlhf import BaseModelConfig, RoleStack
from lora_rlhf.eval.responses import generate_responses
from lora_rlhf.inference.engine import generate_texts
from lora_rlhf.inference.options import GenerationOptions
from lora_rlhf.models import engine, forward
from lora_rlhf.models.engine import Engine, Samples
from lora_rlhf.models.sequences import ends_with_stop, stop_mask, until_stop
from lora_rlhf.testing.reference import NEUTRAL_SAMPLING, sampling_kwargs

EOS, END, PAD = 2, 7, 0


def test_stop_mask_keeps_tokens_up_to_and_including_the_first_stop_of_any_kind():
    ids = torch.tensor([[5, 6, END, 9, PAD], [5, EOS, END, PAD, PAD], [5, 6, 8, 9, 4]])
    mask = stop_mask(ids, {EOS, END})
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert ends_with_stop(ids, mask, {EOS, END}).tolist() == [True, True, False]


def test_until_stop_cuts_at_the_first_stop_and_drops_trailing_padding_otherwise():
    ids, stopped = until_stop(torch.tensor([5, END, 9, EOS]), {EOS, END}, PAD)
    assert ids.tolist() == [5, END] and stopped
    ids, stopped = until_stop(torch.tensor([5, 6, PAD, PAD]), {EOS, END}, PAD)
    assert ids.tolist() == [5, 6] and not stopped


def test_sampling_options_switch_every_generation_config_processor_off():
    sampled = sampling_kwargs(0.7)
    assert sampled["do_sample"] and sampled["temperature"] == 0.7
    assert sampled["top_k"] == 0 and sampled["top_p"] == 1.0  # 0, not None: None means "the model's top_k 50"
    assert NEUTRAL_SAMPLING.items() <= sampled.items()
    greedy = sampling_kwargs(0.0)
    assert greedy["do_sample"] is False and "temperature" not in greedy and greedy["repetition_penalty"] == 1.0
    with pytest.raises(ValueError):
        sampling_kwargs(-1.0)


@pytest.fixture()
def stack(tiny_llama) -> RoleStack:
    """A stack whose generation_config would truncate sampling to the argmax and penalise repeats."""
    stack = RoleStack.load(BaseModelConfig(tiny_llama, quantization="none"))
    config = stack.base_model.generation_config
    config.top_k, config.repetition_penalty = 1, 5.0
    return stack


def _argmax_share(stack: RoleStack, prompts: list[str], responses: list[torch.Tensor], starts: list[int]) -> float:
    """Share of sampled response tokens that are the model's argmax at their position."""
    hits = total = 0
    for ids, start in zip(responses, starts):
        if len(ids) <= start:
            continue
        row = ids.unsqueeze(0)
        with torch.no_grad():
            states, project = forward.logit_states(stack, row, torch.ones_like(row))
            greedy = project(states[0, start - 1 : -1]).argmax(-1)
        hits += int((greedy == ids[start:]).sum())
        total += len(ids) - start
    return hits / total


def test_eval_samples_from_the_plain_softmax_not_the_models_generation_config(stack):
    prompts = ["sort the numbers 3 1 2", "hello world", "count letters", "answer with yes or no"] * 4
    torch.manual_seed(0)
    out = generate_responses(stack, "base", prompts, max_new_tokens=8, batch_size=16, temperature=1.0)
    # With the config's top_k = 1 every token would be the argmax; a tiny random model's softmax is nearly flat.
    assert _argmax_share(stack, prompts, out.input_ids, out.response_start) < 0.5


def test_inference_top_k_zero_means_off_not_the_models_default(stack):
    texts = ["<|user|>\nhello world<|end|>\n<|assistant|>\n"] * 16
    tokenizer = stack.tokenizer
    completions = generate_texts(stack, "base", texts, GenerationOptions(max_new_tokens=8, temperature=1.0, seed=0))
    prompt = tokenizer(texts[0], add_special_tokens=False).input_ids
    rows = [torch.tensor(prompt + tokenizer(c.text, add_special_tokens=False).input_ids) for c in completions]
    assert _argmax_share(stack, texts, rows, [len(prompt)] * len(rows)) < 0.5


def test_eval_stops_at_every_end_of_response_id_like_rollouts(stack, monkeypatch):
    tokenizer = stack.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    stack.base_model.generation_config.eos_token_id = [tokenizer.eos_token_id, end]
    assert end in stack.eos_ids()
    word = tokenizer("hello", add_special_tokens=False).input_ids
    # engine.sample, given no stop ids, has the engine stop at every end-of-response id
    engine_stops = []

    def admitted(engine, *args, **kwargs):
        engine_stops.append(engine.eos)
        raise StopIteration

    with monkeypatch.context() as patched:
        patched.setattr(Engine, "admit_ids", admitted)
        ids = tokenizer(["hello world"], return_tensors="pt").input_ids
        with pytest.raises(StopIteration):
            engine.sample(stack, "base", ids, torch.ones_like(ids), max_new_tokens=2, temperature=0.0)
    assert engine_stops == [stack.eos_ids()] and end in engine_stops[0]

    def fake_decode(stack, role, input_ids, attention_mask, **kwargs):
        assert kwargs.get("stop_ids") is None  # engine.sample stops at eos_ids() by default
        tail = torch.tensor(word + [end] + word + [tokenizer.pad_token_id])
        return Samples(torch.cat([input_ids, tail.expand(input_ids.shape[0], -1)], dim=1))

    monkeypatch.setattr("lora_rlhf.models.engine.sample", fake_decode)
    out = generate_responses(stack, "base", ["hello world"], max_new_tokens=8, batch_size=1, temperature=0.0)
    assert out.texts == ["hello"]
    assert out.input_ids[0][out.response_start[0] :].tolist() == word + [end]
