"""Demonstration and ranking rows: formats, tokenization, truncation, and one-line errors for bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_rlhf.data.chat import render_prompt
from lora_rlhf.data.demonstrations import IGNORE_INDEX, load_demonstrations, load_sft_examples
from lora_rlhf.data.prompts import load_prompts, prompt_text
from lora_rlhf.data.rankings import load_ranking_examples, split_transcripts
from lora_rlhf.data.sources import DatasetSpec
from lora_rlhf.errors import LoraRlhfError


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def write_jsonl(folder: Path, rows: list[dict], name: str = "rows.jsonl") -> DatasetSpec:
    path = folder / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return DatasetSpec(path=str(path))


def rankings(tmp_path, tokenizer, rows, max_length=64, **kwargs):
    return load_ranking_examples(write_jsonl(tmp_path, rows), tokenizer, max_length, **kwargs)


# ------------------------------------------------------------------ demonstrations
def test_sft_labels_mask_every_prompt_token(tmp_path, tokenizer):
    rows = [
        {"prompt": "sort the numbers 3 1 2", "completion": "1 2 3"},
        {
            "messages": [
                {"role": "system", "content": "be good"},
                {"role": "user", "content": "hello world"},
                {"role": "assistant", "content": "thanks"},
            ]
        },
    ]
    examples, report = load_sft_examples(write_jsonl(tmp_path, rows), tokenizer, max_length=128)
    assert report.kept == 2 and report.dropped == 0
    prompts = [
        render_prompt(tokenizer, "sort the numbers 3 1 2"),
        render_prompt(
            tokenizer, [{"role": "system", "content": "be good"}, {"role": "user", "content": "hello world"}]
        ),
    ]
    for example, prompt, completion in zip(examples, prompts, ["1 2 3", "thanks"]):
        n_prompt = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt  # every prompt token masked
        response = example.labels[n_prompt:]
        assert IGNORE_INDEX not in response and response == example.input_ids[n_prompt:]
        assert response[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(response[:-1]) == completion


def test_truncation_shortens_but_never_empties_a_response(tmp_path, tokenizer):
    spec = write_jsonl(
        tmp_path, [{"prompt": "hello", "completion": "the quick brown fox jumps over the lazy dog " * 4}]
    )
    n_prompt = len(tokenizer(render_prompt(tokenizer, "hello"), add_special_tokens=False).input_ids)
    examples, report = load_sft_examples(spec, tokenizer, max_length=n_prompt + 3)
    assert report.truncated == 1 and len(examples[0].input_ids) == n_prompt + 3
    assert sum(label != IGNORE_INDEX for label in examples[0].labels) == 3
    with pytest.raises(LoraRlhfError, match=r"line 1: prompt longer than max_length"):
        load_sft_examples(spec, tokenizer, max_length=n_prompt)  # no room left for any response token
    examples, report = load_sft_examples(spec, tokenizer, max_length=n_prompt, on_bad_row="skip")
    assert examples == [] and report.dropped == 1


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "hi"}, r"line 2: missing field 'completion'"),
        ({"prompt": "hi", "completion": 3}, r"line 2: field 'completion' is int, expected a string"),
        ({"prompt": "hi", "completion": "  "}, r"line 2: field 'completion' is empty"),
        ({"messages": [{"role": "user", "content": "hi"}]}, r"line 2: field 'messages'.*expected 'assistant'"),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
            r"line 2: field 'messages': the assistant's response is empty",
        ),
    ],
)
def test_bad_demonstrations_name_file_row_and_field(tmp_path, tokenizer, row, message):
    spec = write_jsonl(tmp_path, [{"prompt": "ok", "completion": "fine"}, row])
    with pytest.raises(LoraRlhfError, match=message) as info:
        load_sft_examples(spec, tokenizer, max_length=64)
    assert spec.path in str(info.value) and "\n" not in str(info.value)
    examples, report = load_sft_examples(spec, tokenizer, max_length=64, on_bad_row="skip")
    assert len(examples) == 1 and report.dropped == 1


def test_load_demonstrations_renders_prompts_with_the_chat_template(tmp_path, tokenizer):
    spec = write_jsonl(tmp_path, [{"prompt": "hello", "completion": "world"}])
    (demo,), _ = load_demonstrations(spec, tokenizer)
    prompt_text, completion = demo
    assert prompt_text == "<|user|>\nhello<|end|>\n<|assistant|>\n" and completion == "world"


def test_parquet_and_json_files_load(tmp_path, tokenizer):
    import datasets

    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    for name in ("d.parquet", "d.json"):
        examples, _ = load_sft_examples(DatasetSpec(str(tmp_path / name)), tokenizer, max_length=64)
        assert len(examples) == 2


def test_conversational_prompts_render_every_turn_in_all_three_formats(tmp_path, tokenizer):
    # TRL's conversational format: "prompt" holds the messages before the response, e.g. a system turn.
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    rendered = render_prompt(tokenizer, prompt)
    assert "Be brief." in rendered and rendered.endswith("<|assistant|>\n")
    (demo,), _ = load_demonstrations(
        write_jsonl(tmp_path, [{"prompt": prompt, "completion": "world"}], "d.jsonl"), tokenizer
    )
    assert demo.prompt_text == rendered
    (example,), _ = rankings(tmp_path, tokenizer, [{"prompt": prompt, "responses": ["a", "b"], "ranks": [1, 0]}])
    assert example.prompt_ids == tokenizer(rendered, add_special_tokens=False).input_ids
    (loaded,), _ = load_prompts(write_jsonl(tmp_path, [{"prompt": prompt}], "p.jsonl"))
    assert loaded == prompt and prompt_text(loaded) == "hello"


# ------------------------------------------------------------------ rankings
def test_three_ranking_formats(tmp_path, tokenizer):
    rows = [
        {"prompt": "say", "responses": ["good", "bad", "great"], "ranks": [1, 2, 0]},
        {"prompt": "say", "chosen": "good", "rejected": "bad"},
        {
            "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: thanks\n\nAssistant: good",
            "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: thanks\n\nAssistant: bad",
        },
    ]
    examples, report = rankings(tmp_path, tokenizer, rows)
    assert report.kept == 3
    assert [e.ranks for e in examples] == [[1, 2, 0], [0, 1], [0, 1]]
    assert all(r[-1] == tokenizer.eos_token_id for e in examples for r in e.response_ids)
    assert examples[1].prompt_ids == examples[0].prompt_ids
    assert tokenizer.decode(examples[2].response_ids[1][:-1]) == "bad"


def test_hh_rlhf_transcripts_split_at_the_last_shared_assistant_turn():
    prompt, chosen, rejected = split_transcripts(
        "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant: great answer",
        "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant: gross answer",
    )
    assert prompt == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and?"},
    ]
    assert (chosen, rejected) == ("great answer", "gross answer")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"responses": ["a", "b"], "ranks": [0, 1]}, r"missing field 'prompt'"),
        ({"prompt": 7, "responses": ["a", "b"], "ranks": [0, 1]}, r"field 'prompt' is int"),
        ({"prompt": "p", "responses": ["a", 5], "ranks": [0, 1]}, r"field 'responses\[1\]' is int"),
        ({"prompt": "p", "responses": ["a", " "], "ranks": [0, 1]}, r"field 'responses\[1\]' is empty"),
        ({"prompt": "p", "responses": ["a"], "ranks": [0]}, r"K = 1; a ranking needs K >= 2"),
        ({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [0, 1, 3]}, r"\[0, 1, 3\] is not a permutation"),
        ({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [0, 1]}, r"'ranks' has 2 entries for 3 responses"),
        ({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [0, 1, 1]}, r"\[0, 1, 1\] has ties"),
        ({"prompt": "p", "chosen": "a"}, r"missing field 'rejected'"),
        ({"prompt": "p", "chosen": "a", "rejected": ""}, r"field 'rejected' is empty"),
        ({"prompt": "p"}, r"missing fields: expected \{prompt, responses, ranks\}"),
        ({"prompt": [], "chosen": "a", "rejected": "b"}, r"field 'prompt' must be a non-empty list"),
        (
            {"prompt": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "x"}], "chosen": "a"},
            r"field 'prompt': its last message's role is 'assistant', expected 'user'",
        ),
        ({"prompt": [{"role": "robot", "content": "p"}], "chosen": "a"}, r"prompt\[0\]: role 'robot' is not one of"),
    ],
)
def test_bad_rankings_name_file_row_and_field(tmp_path, tokenizer, row, message):
    good = {"prompt": "p", "responses": ["a", "b"], "ranks": [1, 0]}
    with pytest.raises(LoraRlhfError, match=r"rows.jsonl, line 2: .*" + message):
        rankings(tmp_path, tokenizer, [good, row])
    examples, report = rankings(tmp_path, tokenizer, [good, row], on_bad_row="skip")
    assert len(examples) == 1 and report.dropped == 1


def test_ties_skip_pairs_keeps_the_untied_pairs(tmp_path, tokenizer):
    rows = [{"prompt": "p", "responses": ["a", "b", "c"], "ranks": [0, 1, 1]}]
    (example,), _ = rankings(tmp_path, tokenizer, rows, ties="skip_pairs")
    assert example.ranks == [0, 1, 1]
    with pytest.raises(LoraRlhfError, match="every response is tied"):
        rankings(tmp_path, tokenizer, [{"prompt": "p", "responses": ["a", "b"], "ranks": [0, 0]}], ties="skip_pairs")


def test_ranking_prompt_longer_than_max_length(tmp_path, tokenizer):
    rows = [{"prompt": "the quick brown fox " * 20, "chosen": "a", "rejected": "b"}]
    with pytest.raises(LoraRlhfError, match=r"line 1: prompt longer than max_length"):
        rankings(tmp_path, tokenizer, rows, max_length=16)
    examples, report = rankings(tmp_path, tokenizer, rows, max_length=16, on_bad_row="skip")
    assert examples == [] and report.dropped == 1 and report.skipped


def test_ranking_truncation_is_counted(tmp_path, tokenizer):
    rows = [{"prompt": "p", "chosen": "the quick brown fox jumps over the lazy dog", "rejected": "no"}]
    n_prompt = len(tokenizer(render_prompt(tokenizer, "p"), add_special_tokens=False).input_ids)
    (example,), report = rankings(tmp_path, tokenizer, rows, max_length=n_prompt + 2)
    assert report.truncated == 1 and [len(r) for r in example.response_ids] == [2, 2]


# ------------------------------------------------------------------ sources, splits, templates
def test_hub_dataset_ids_go_to_load_dataset_with_name_dir_and_split(monkeypatch, tokenizer):
    import datasets

    calls = []
    hh = {"chosen": "\n\nHuman: hi\n\nAssistant: good", "rejected": "\n\nHuman: hi\n\nAssistant: bad"}

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.Dataset.from_list([hh, hh, hh])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = DatasetSpec("Anthropic/hh-rlhf", split="test", data_dir="harmless-base", max_rows=2)
    examples, report = load_ranking_examples(spec, tokenizer, 64)
    assert calls == [("Anthropic/hh-rlhf", None, {"data_dir": "harmless-base", "split": "test"})]
    assert len(examples) == 2 and report.source == "Anthropic/hh-rlhf[test]"


def test_local_split_slices_and_missing_files(tmp_path, tokenizer):
    rows = [{"prompt": str(i), "completion": "ok"} for i in range(4)]
    spec = write_jsonl(tmp_path, rows)
    spec.split = "train[:50%]"
    examples, report = load_sft_examples(spec, tokenizer, max_length=64)
    assert len(examples) == 2 and report.source.endswith("rows.jsonl[train[:50%]]")
    with pytest.raises(LoraRlhfError, match=r"dataset file '.*nowhere\.jsonl' does not exist"):
        load_sft_examples(DatasetSpec(str(tmp_path / "nowhere.jsonl")), tokenizer, max_length=64)


def test_hold_out_fraction():
    from lora_rlhf.data.split import hold_out

    train, held = hold_out(list(range(20)), 0.25, seed=0)
    assert len(held) == 5 and sorted(train + held) == list(range(20))
    assert hold_out(list(range(20)), 0.25, seed=0) == (train, held)  # fixed by the seed
    assert hold_out(list(range(20)), 0.25, seed=1)[1] != held
    assert hold_out([1, 2], 0.01, seed=0)[1] != []  # a fraction > 0 holds out at least one item...
    assert hold_out([1], 0.5, seed=0) == ([1], [])  # ...but never the last training item
    assert hold_out(list(range(5)), 0.0, seed=0) == (list(range(5)), [])


def test_prompts_without_a_chat_template_render_as_plain_text():
    from types import SimpleNamespace

    plain = SimpleNamespace(chat_template=None)
    assert render_prompt(plain, "sort 3 1 2") == "sort 3 1 2"
    assert render_prompt(plain, [{"role": "user", "content": "hi"}]) == "user: hi\nassistant: "


def test_tied_ranks_out_of_range_are_rejected(tmp_path, tokenizer):
    rows = [{"prompt": "p", "responses": ["a", "b", "c"], "ranks": [0, 0, 5]}]
    with pytest.raises(LoraRlhfError, match=r"line 1: field 'ranks' \[0, 0, 5\] has values outside 0..2"):
        rankings(tmp_path, tokenizer, rows, ties="skip_pairs")


def test_a_lone_surrogate_is_a_one_line_error_in_every_loader(tmp_path, tokenizer):
    """Issue 29: "\\ud800" reached the tokenizer as a TypeError traceback; refused where the file is read."""
    path = tmp_path / "s.jsonl"
    path.write_text('{"prompt": "ok", "completion": "fine"}\n{"prompt": "a \\udbff b", "completion": "x"}\n')
    spec = DatasetSpec(path=str(path))
    expected = r"s\.jsonl, line 2: field 'prompt' holds a lone UTF-16 surrogate"
    for load in (
        lambda: load_sft_examples(spec, tokenizer, 64),
        lambda: load_demonstrations(spec, tokenizer),
        lambda: load_prompts(spec),
        lambda: load_prompts(spec, on_bad_row="skip"),
    ):
        with pytest.raises(LoraRlhfError, match=expected):
            load()
    path.write_text('{"prompt": [{"role": "user", "content": "\\ud800"}]}')
    with pytest.raises(LoraRlhfError, match=r"line 1: field 'prompt\[0\]\.content' holds a lone UTF-16 surrogate"):
        load_prompts(spec)
    pair = tmp_path / "s.json"
    pair.write_text('[{"prompt": "p", "responses": ["a", "\\udc00"], "ranks": [0, 1]}]')
    with pytest.raises(LoraRlhfError, match=r"s\.json, row 0: field 'responses\[1\]' holds a lone UTF-16 surrogate"):
        load_ranking_examples(DatasetSpec(path=str(pair)), tokenizer, 64)
    path.write_text('{"prompt": "escaped but fine \\u00e9 \\ud83d\\ude00", "completion": "x"}\n')
    (example,), _ = load_sft_examples(spec, tokenizer, 64)  # a proper pair of escapes is one character


def test_a_row_nested_past_the_recursion_limit_is_a_one_line_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"prompt": "ok"}\n' + "[" * 200_000 + "\n")
    with pytest.raises(LoraRlhfError, match=r"deep\.jsonl, line 2: '\[\[\[.*' nests arrays or objects too deeply"):
        load_prompts(DatasetSpec(path=str(path)))


@pytest.mark.parametrize("roles", [("assistant",), ("system", "assistant"), ("system", "assistant", "assistant")])
def test_a_conversation_without_a_user_turn_is_refused_like_an_empty_prompt(tmp_path, tokenizer, roles):
    """Issue 29: {"messages": [assistant]} trained on an empty prompt while {"prompt": ""} was refused."""
    row = {"messages": [{"role": role, "content": f"{role} text"} for role in roles]}
    spec = write_jsonl(tmp_path, [{"prompt": "hi", "completion": "yo"}, row])
    expected = r"rows\.jsonl, line 2: field 'messages' has no 'user' turn"
    with pytest.raises(LoraRlhfError, match=expected):
        load_sft_examples(spec, tokenizer, 64)
    with pytest.raises(LoraRlhfError, match=expected):
        load_demonstrations(spec, tokenizer)
    if len(roles) > 1:  # as a prompt the last assistant turn is dropped; a lone one is refused already
        with pytest.raises(LoraRlhfError, match=expected):
            load_prompts(spec)
    examples, report = load_sft_examples(spec, tokenizer, 64, on_bad_row="skip")
    assert len(examples) == 1 and report.dropped == 1


def test_responses_identical_once_truncated_follow_the_identical_responses_rule(tmp_path, tokenizer, caplog):
    """Issue 29: responses differing only beyond max_length were cut identical and trained to nothing (loss log 2)."""
    shared = "the quick brown fox jumps over the lazy dog " * 4
    n_prompt = len(tokenizer(render_prompt(tokenizer, "p"), add_special_tokens=False).input_ids)
    max_length = n_prompt + 8
    pair = {"prompt": "p", "chosen": shared + "and wins", "rejected": shared + "and loses"}
    expected = r"line 2: the two responses are identical in the 8 tokens the model sees \(max_length \d+ leaves 8"
    for ties in ("error", "skip_pairs"):
        with pytest.raises(LoraRlhfError, match=expected + r".*no preference to learn from \(raise rm\.max_length\)"):
            rankings(
                tmp_path, tokenizer, [{"prompt": "q", "chosen": "a", "rejected": "b"}, pair], max_length, ties=ties
            )
    three = {"prompt": "p", "responses": [shared + "b", "short", shared + "a"], "ranks": [2, 0, 1]}
    with pytest.raises(LoraRlhfError, match=r"responses\[0\] and responses\[2\] are identical in the 8 tokens"):
        rankings(tmp_path, tokenizer, [three], max_length=max_length)
    with caplog.at_level("WARNING", logger="lora_rlhf.data.rows"):
        (example,), report = rankings(tmp_path, tokenizer, [three], max_length=max_length, ties="skip_pairs")
        report.log()
    assert example.ranks == [0, 1] and len(example.response_ids) == 2  # the worse-ranked copy (rank 2) is left out
    assert example.no_signal_pairs == 1 and report.no_signal_pairs == 1
    assert "1 ranked pairs carried no signal" in caplog.text
    examples, report = rankings(tmp_path, tokenizer, [pair], max_length=max_length + 64)  # room enough: distinct
    assert len(examples[0].response_ids) == 2 and report.no_signal_pairs == 0
