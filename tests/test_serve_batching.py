"""Batched serving (issue 15): rows of one batch mix adapters and base yet each answers as if served alone; budgets,
stops and halts act per row; the queue is bounded; log-probs follow OpenAI's shapes; unsupported options are 400."""

from __future__ import annotations

import itertools
import math
import threading

import httpx2 as httpx
import openai
import pytest
import torch

from lora_rlhf.inference import AdapterRegistry, GenerationOptions
from lora_rlhf.inference.engine import DecodeEngine, Row, generate_rows
from lora_rlhf.models.sampling import penalize
from lora_rlhf.serve import BackgroundServer, create_app
from lora_rlhf.serve.batcher import Batcher
from lora_rlhf.serve.errors import APIError
from lora_rlhf.serve.limits import ServeLimits
from lora_rlhf.testing.adapters import make_adapters

PROMPTS = ["sort the numbers 3 1 2", "hello", "reverse the words: a b c d e f", "what is 2 + 2?"]
MODELS = ["base", "polite", "terse", "plain"]
TOKENS = 8


@pytest.fixture(scope="module")
def adapters(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    return {"root": root, **make_adapters(tiny_llama, root, ["polite", "terse", "plain", "spare"])}


@pytest.fixture(scope="module")
def registry(tiny_llama, adapters):
    registry = AdapterRegistry.load(tiny_llama, quantization="none", device="cpu")
    for name in ("polite", "terse", "plain"):
        registry.attach(name, adapters[name])
    return registry


@pytest.fixture()
def batches(monkeypatch):
    """The roles of the live rows at every decoding step the server runs."""
    seen: list[list[str]] = []
    original = DecodeEngine.step

    def recording(engine):
        seen.append([live.row.role for live in engine.live])
        return original(engine)

    monkeypatch.setattr(DecodeEngine, "step", recording)
    return seen


def alone(registry, name, prompt, tokens=TOKENS, chat=False, **options):
    text = registry.render([{"role": "user", "content": prompt}]) if chat else prompt
    return registry.complete(name, [text], GenerationOptions(max_new_tokens=tokens, **options))[0]


def serve(registry, adapters=None, **limits) -> BackgroundServer:
    roots = [adapters["root"]] if adapters else []
    return BackgroundServer(create_app(registry, allowed_roots=roots, limits=ServeLimits(**limits)))


def client_of(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)


def concurrently(calls) -> list:
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    return results


# ----------------------------------------------------------------------------- rows, without a server
def test_a_mixed_batch_answers_each_row_as_alone(registry):
    rows = [
        Row(model, registry.render(prompt), GenerationOptions(max_new_tokens=3 + i))
        for i, (model, prompt) in enumerate(zip(MODELS, PROMPTS, strict=True))
    ]
    done = generate_rows(registry.stack, rows)
    for row, prompt, got in zip(rows, PROMPTS, done, strict=True):
        expected = alone(registry, row.role, prompt, tokens=row.options.max_new_tokens, chat=True)
        assert (got.text, got.completion_tokens, got.finish_reason) == (
            expected.text,
            expected.completion_tokens,
            expected.finish_reason,
        ), row.role
        assert got.prompt_tokens == expected.prompt_tokens


def test_a_mixed_batch_on_an_nf4_base(tiny_llama, adapters):
    # PEFT's mixed-adapter forward has a bitsandbytes Linear4bit variant: the served quantized base uses it.
    nf4 = AdapterRegistry.load(tiny_llama, quantization="nf4", device="cpu")
    for name in ("polite", "terse"):
        nf4.attach(name, adapters[name])
    options = GenerationOptions(max_new_tokens=6)
    done = generate_rows(nf4.stack, [Row(m, PROMPTS[0], options) for m in ("base", "polite", "terse")])
    assert [c.text for c in done] == [
        nf4.complete(m, [PROMPTS[0]], options)[0].text for m in ("base", "polite", "terse")
    ]


def test_a_halted_row_ends_while_the_others_go_on(registry):
    asked = {"n": 0}

    def halt_after_two() -> bool:
        asked["n"] += 1
        return asked["n"] >= 2

    never_end = GenerationOptions(max_new_tokens=12)
    rows = [Row("polite", PROMPTS[0], never_end, halt_after_two), Row("terse", PROMPTS[0], never_end)]
    halted, other = generate_rows(registry.stack, rows)
    assert halted.completion_tokens == 2 and halted.finish_reason == "length"
    expected = alone(registry, "terse", PROMPTS[0], tokens=12)
    assert other.text == expected.text and other.completion_tokens == expected.completion_tokens


def test_stop_strings_act_per_row(registry):
    full = alone(registry, "polite", PROMPTS[0]).text
    stop = full[3:5]
    rows = [
        Row("polite", PROMPTS[0], GenerationOptions(max_new_tokens=TOKENS, stop=[stop])),
        Row("polite", PROMPTS[0], GenerationOptions(max_new_tokens=TOKENS)),
    ]
    cut, whole = generate_rows(registry.stack, rows)
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"
    assert whole.text == full


def test_penalties_by_hand():
    scores = torch.zeros(2, 5)
    generated = torch.tensor([[1, 1, 3], [2, 0, 0]])
    out = penalize(scores, generated, frequency=[0.5, 0.0], presence=[1.0, -2.0])
    # row 0: token 1 twice -> -(2 * 0.5 + 1), token 3 once -> -(0.5 + 1); row 1: presence only, negative = a bonus
    assert out.tolist() == [[0.0, -2.0, 0.0, -1.5, 0.0], [2.0, 0.0, 2.0, 0.0, 0.0]]


def test_penalties_act_per_row_of_a_batch(registry):
    penalized = GenerationOptions(max_new_tokens=12, frequency_penalty=2.0, presence_penalty=1.0)
    plain = GenerationOptions(max_new_tokens=12)
    rows = [Row("polite", PROMPTS[0], penalized), Row("polite", PROMPTS[0], plain)]
    got_penalized, got_plain = generate_rows(registry.stack, rows)
    expected = registry.complete("polite", [PROMPTS[0]], penalized)[0]
    assert got_penalized.text == expected.text
    assert got_plain.text == alone(registry, "polite", PROMPTS[0], tokens=12).text
    assert got_penalized.text != got_plain.text


def test_rows_with_different_options_share_a_batch(registry):
    # Each row decodes with its own options; a seeded row draws from its own stream, whatever shares its batch.
    seeded = GenerationOptions(max_new_tokens=TOKENS, temperature=1.0, seed=7)
    others = [
        GenerationOptions(max_new_tokens=TOKENS),
        GenerationOptions(max_new_tokens=TOKENS, temperature=0.7, top_p=0.9),
        GenerationOptions(max_new_tokens=TOKENS, temperature=1.3, top_k=5, repetition_penalty=1.3),
    ]
    rows = [Row("polite", PROMPTS[0], seeded)] + [Row(m, PROMPTS[1], o) for m, o in zip(MODELS[1:], others)]
    mixed = generate_rows(registry.stack, rows)
    (lone,) = generate_rows(registry.stack, rows[:1])
    assert mixed[0].text == lone.text
    assert mixed[1].text == alone(registry, MODELS[1], PROMPTS[1]).text  # greedy, next to sampled rows


def test_a_full_queue_is_429(registry):
    batcher = Batcher(registry, max_batch_size=4, max_queue=2)
    options = GenerationOptions(max_new_tokens=2)
    with registry.lock:  # the worker cannot start a batch: rows stay queued
        waiting = threading.Thread(target=batcher.complete, args=([Row("base", PROMPTS[0], options)] * 2,))
        waiting.start()
        while batcher.queued < 2:
            waiting.join(0.01)
        with pytest.raises(APIError) as err:
            batcher.complete([Row("base", PROMPTS[1], options)])
        assert err.value.status == 429
        with pytest.raises(APIError) as err:
            batcher.complete([Row("base", PROMPTS[1], options)] * 3)
        assert err.value.status == 400  # could never fit
    waiting.join(timeout=60)
    assert not waiting.is_alive()
    batcher.close()


# ------------------------------------------------------------------------------- through the server
def test_a_full_queue_is_429_through_the_server(registry):
    app = create_app(registry, limits=ServeLimits(max_queue=1))
    with BackgroundServer(app) as server:
        client = client_of(server)
        with registry.lock:  # generation cannot start: the first request stays queued
            first = threading.Thread(
                target=client.completions.create, kwargs={"model": "base", "prompt": "hi", "max_tokens": 2}
            )
            first.start()
            while app.state.batcher.queued < 1:
                first.join(0.01)
            with pytest.raises(openai.RateLimitError) as err:
                client.completions.create(model="terse", prompt="hi", max_tokens=2)
            assert err.value.body["code"] == "server_overloaded"
        first.join(timeout=60)
        assert client.completions.create(model="terse", prompt="hi", max_tokens=2).choices[0].finish_reason


def test_sixteen_concurrent_requests_over_three_adapters_and_base(registry, batches):
    expected = {(m, p): alone(registry, m, p, chat=True).text for m in MODELS for p in PROMPTS}
    with serve(registry, max_batch_size=16, batch_window_s=0.5) as server:
        client = client_of(server)

        def ask(model: str, prompt: str, stream: bool):
            messages = [{"role": "user", "content": prompt}]
            if stream:
                chunks = client.chat.completions.create(
                    model=model, messages=messages, max_tokens=TOKENS, temperature=0, stream=True
                )
                return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            out = client.chat.completions.create(model=model, messages=messages, max_tokens=TOKENS, temperature=0)
            return out.choices[0].message.content

        jobs = [(m, p, i % 3 == 0) for i, (m, p) in enumerate((m, p) for m in MODELS for p in PROMPTS)]
        results = concurrently([lambda m=m, p=p, s=s: ask(m, p, s) for m, p, s in jobs])
    for (model, prompt, _), text in zip(jobs, results, strict=True):
        assert text == expected[model, prompt], (model, prompt, text)
    assert max(len(b) for b in batches) > 1 and any(len(set(b)) > 2 for b in batches), batches


def test_one_at_a_time_when_the_batch_size_is_one(registry, batches):
    with serve(registry, max_batch_size=1) as server:
        client = client_of(server)
        results = concurrently(
            [
                lambda m=m: client.completions.create(model=m, prompt=PROMPTS[0], max_tokens=4, temperature=0)
                for m in MODELS
            ]
        )
    assert all(len(b) == 1 for b in batches)
    # One request after another: each one's steps run together, never interleaved with another's.
    assert sorted(role for role, _ in itertools.groupby(b[0] for b in batches)) == sorted(MODELS)
    for model, out in zip(MODELS, results, strict=True):
        assert out.choices[0].text == alone(registry, model, PROMPTS[0], tokens=4).text


def test_attach_and_detach_while_batches_run(registry, adapters):
    expected = {m: alone(registry, m, PROMPTS[0]).text for m in MODELS}
    admin_errors: list = []
    with serve(registry, adapters, max_batch_size=4) as server:
        client, admin = client_of(server), f"{server.url}/v1/adapters"

        def churn() -> None:
            for _ in range(3):
                for response in (
                    httpx.post(admin, json={"name": "spare", "path": str(adapters["spare"])}, timeout=60),
                    httpx.delete(f"{admin}/spare", timeout=60),
                ):
                    if response.status_code not in (200, 201):
                        admin_errors.append(response.text)

        def ask(model: str) -> str:
            return client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=TOKENS, temperature=0)

        results = concurrently([churn] + [lambda m=m: ask(m) for m in MODELS * 3])
    assert not admin_errors
    for model, out in zip(MODELS * 3, results[1:], strict=True):
        assert out.choices[0].text == expected[model], model


def test_seeded_sampling_is_reproducible_in_batches(registry):
    with serve(registry, max_batch_size=8, batch_window_s=0.2) as server:
        client = client_of(server)

        def sample(seed: int, temperature: float = 1.0):
            out = client.completions.create(
                model="polite", prompt=PROMPTS[0], max_tokens=TOKENS, temperature=temperature, seed=seed, n=2
            )
            return [c.text for c in out.choices]

        first = concurrently([lambda: sample(1), lambda: sample(2), lambda: sample(1, 0.5)])
        again = sample(1)
    assert first[0] == again and first[0] != first[1]


# --------------------------------------------------------------------------------------- log-probs
def test_chat_logprobs_are_the_models_log_softmax(registry):
    with serve(registry) as server:
        out = client_of(server).chat.completions.create(
            model="terse",
            messages=[{"role": "user", "content": PROMPTS[0]}],
            max_tokens=TOKENS,
            temperature=0,
            logprobs=True,
            top_logprobs=3,
        )
    content = out.choices[0].logprobs.content
    special = set(registry.stack.tokenizer.all_special_tokens)  # near-uniform random logits may pick one
    assert "".join(t.token for t in content if t.token not in special) == out.choices[0].message.content
    assert len(content) == out.usage.completion_tokens
    for token in content:
        assert len(token.top_logprobs) == 3 and token.logprob <= 0
        assert token.top_logprobs[0].token == token.token  # greedy: the chosen token is the most likely
        assert math.isclose(token.top_logprobs[0].logprob, token.logprob)
        assert token.bytes == list(token.token.encode())
    # The first token's log-prob, from one forward pass of the adapter.
    stack = registry.stack
    ids = stack.tokenizer(registry.render(PROMPTS[0]), return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad(), stack.use("terse"):
        logits = stack.model(input_ids=ids).logits[0, -1].float()
    first = torch.log_softmax(logits, -1).max().item()
    assert math.isclose(content[0].logprob, first, abs_tol=1e-4)


def test_logprobs_of_a_response_cut_at_a_stop_string(registry):
    full = alone(registry, "polite", PROMPTS[0]).text
    stop = full[3:5]
    with serve(registry) as server:
        out = client_of(server).completions.create(
            model="polite", prompt=PROMPTS[0], max_tokens=TOKENS, temperature=0, stop=[stop], logprobs=0
        )
    choice = out.choices[0]
    assert choice.text == full[: full.find(stop)]
    tokens, special = choice.logprobs.tokens, set(registry.stack.tokenizer.all_special_tokens)

    def joined(some: list[str]) -> str:
        return "".join(t for t in some if t not in special)

    # The tokens that make up the text, and not one more (those of the stop string are left out).
    assert joined(tokens).startswith(choice.text) and len(tokens) <= out.usage.completion_tokens
    assert len(joined(tokens[:-1])) < len(choice.text) if choice.text else tokens == []


def test_completion_logprobs_legacy_shape(registry):
    with serve(registry) as server:
        out = client_of(server).completions.create(
            model="polite", prompt=PROMPTS[1], max_tokens=TOKENS, temperature=0.8, top_p=0.9, seed=3, logprobs=2
        )
    choice = out.choices[0]
    logprobs = choice.logprobs
    special = set(registry.stack.tokenizer.all_special_tokens)
    assert "".join(t for t in logprobs.tokens if t not in special) == choice.text
    assert len(logprobs.tokens) == out.usage.completion_tokens
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0 and all(len(top) <= 2 for top in logprobs.top_logprobs)
    assert all(-9999 <= lp <= 0 for lp in logprobs.token_logprobs)


# ------------------------------------------------------------------------------- refused, not ignored
@pytest.mark.parametrize(
    ("endpoint", "extra", "param"),
    [
        ("chat", {"frequency_penalty": 2.5}, "frequency_penalty"),
        ("chat", {"logit_bias": {"1": 5}}, "logit_bias"),
        ("chat", {"top_logprobs": 2}, "top_logprobs"),
        ("chat", {"logprobs": True, "stream": True}, "logprobs"),
        ("completions", {"logprobs": 1, "echo": True}, "echo"),
        ("completions", {"logprobs": 21}, "logprobs"),
    ],
)
def test_unsupported_options_are_400_naming_the_field(registry, endpoint, extra, param):
    body = {"model": "polite", "max_tokens": 2, **extra}
    body |= {"messages": [{"role": "user", "content": "hi"}]} if endpoint == "chat" else {"prompt": "hi"}
    path = "chat/completions" if endpoint == "chat" else "completions"
    with serve(registry) as server:
        response = httpx.post(f"{server.url}/v1/{path}", json=body, timeout=30)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param, response.json()
        zero = {"model": "polite", "max_tokens": 2, "frequency_penalty": 0, "presence_penalty": 0, "prompt": "hi"}
        assert httpx.post(f"{server.url}/v1/completions", json=zero, timeout=30).status_code == 200


def test_a_seeded_request_split_over_batches_does_not_repeat_itself(registry):
    with serve(registry, max_batch_size=2) as server:
        out = client_of(server).completions.create(
            model="polite", prompt=PROMPTS[0], max_tokens=TOKENS, temperature=1.0, seed=5, n=4
        )
    texts = [c.text for c in out.choices]
    assert texts[:2] != texts[2:], texts
