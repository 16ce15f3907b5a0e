"""The OpenAI-compatible server, driven by the official `openai` client against a loopback server."""

from __future__ import annotations

import json
import shutil
import threading

import httpx2 as httpx
import openai
import pytest

from lora_rlhf.inference import AdapterRegistry, GenerationOptions
from lora_rlhf.serve import BackgroundServer, create_app
from lora_rlhf.testing.adapters import make_adapters

PROMPT = "sort the numbers 3 1 2"
TOKENS = 8


@pytest.fixture(scope="module")
def adapters(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    folders = make_adapters(tiny_llama, root / "allowed", ["polite", "terse", "spare"])
    outside = make_adapters(tiny_llama, root / "elsewhere", ["rogue"])
    return {"root": root / "allowed", **folders, **outside}


@pytest.fixture(scope="module")
def registry(tiny_llama, adapters):
    registry = AdapterRegistry.load(tiny_llama, quantization="none", device="cpu")
    registry.attach("polite", adapters["polite"])
    registry.attach("terse", adapters["terse"])
    return registry


@pytest.fixture(scope="module")
def server(registry, adapters):
    app = create_app(registry, allowed_roots=[adapters["root"]])
    with BackgroundServer(app) as server:
        yield server


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)


def alone(registry, name, prompt=PROMPT, chat=False):
    text = registry.render([{"role": "user", "content": prompt}]) if chat else prompt
    return registry.complete(name, [text], GenerationOptions(max_new_tokens=TOKENS))[0].text


def test_binds_to_loopback_by_default(server):
    assert server.host == "127.0.0.1"


def test_models_lists_base_and_adapters(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "base" and {"polite", "terse"} <= set(ids)
    assert client.models.retrieve("polite").id == "polite"


def test_completion_matches_the_adapter_run_directly(client, registry):
    out = client.completions.create(model="polite", prompt=PROMPT, max_tokens=TOKENS, temperature=0)
    assert out.choices[0].text == alone(registry, "polite")
    assert out.usage.completion_tokens <= TOKENS and out.usage.prompt_tokens > 0
    # The model field picks the adapter: the three answers differ.
    answers = {
        m: client.completions.create(model=m, prompt=PROMPT, max_tokens=TOKENS, temperature=0).choices[0].text
        for m in ("base", "polite", "terse")
    }
    assert len(set(answers.values())) == 3, answers


def test_chat_applies_the_template(client, registry):
    out = client.chat.completions.create(
        model="terse", messages=[{"role": "user", "content": PROMPT}], max_tokens=TOKENS, temperature=0
    )
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == alone(registry, "terse", chat=True)
    assert out.choices[0].message.content != alone(registry, "terse", chat=False)


def test_streaming_reassembles_to_the_same_text(client, registry):
    stream = client.chat.completions.create(
        model="polite",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == alone(registry, "polite", chat=True)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    plain = client.completions.create(model="terse", prompt=PROMPT, max_tokens=TOKENS, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in plain) == alone(registry, "terse")


def test_stop_strings_cut_the_response(client, registry):
    full = alone(registry, "polite")
    stop = full[3:5]
    out = client.completions.create(model="polite", prompt=PROMPT, max_tokens=TOKENS, temperature=0, stop=[stop])
    assert out.choices[0].text == full[: full.find(stop)]
    assert out.choices[0].finish_reason == "stop"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="nope", prompt=PROMPT, max_tokens=2)
    assert "nope" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}], stream=True)


def test_bad_requests_are_400_json(client, server):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="polite", prompt=PROMPT, max_tokens=0)
    assert "max_tokens" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="polite", messages=[], max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="polite", prompt=PROMPT, temperature=5)
    raw = httpx.post(
        f"{server.url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"


def test_load_and_unload_at_run_time(client, server, adapters, registry):
    admin = f"{server.url}/v1/adapters"
    response = httpx.post(admin, json={"name": "spare", "path": str(adapters["spare"])})
    assert response.status_code == 201, response.text
    assert "spare" in [m.id for m in client.models.list().data]
    out = client.completions.create(model="spare", prompt=PROMPT, max_tokens=TOKENS, temperature=0)
    assert out.choices[0].text == alone(registry, "spare")
    assert httpx.post(admin, json={"name": "spare", "path": str(adapters["spare"])}).status_code == 409
    assert httpx.delete(f"{admin}/spare").json()["deleted"] is True
    assert "spare" not in [m.id for m in client.models.list().data]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="spare", prompt=PROMPT, max_tokens=2)
    assert httpx.delete(f"{admin}/spare").status_code == 404


def test_an_adapter_config_peft_cannot_read_is_a_400(server, adapters, client):
    """Issue 29: a peft_type PEFT has no class for was a 500 (KeyError) from POST /v1/adapters."""
    folder = shutil.copytree(adapters["spare"], adapters["root"] / "broken")
    config = folder / "adapter_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"peft_type": "NOPE"}))
    response = httpx.post(f"{server.url}/v1/adapters", json={"name": "broken", "path": str(folder)})
    assert response.status_code == 400, response.text
    assert "peft_type 'NOPE'" in response.json()["error"]["message"]
    assert "broken" not in [m.id for m in client.models.list().data]


def test_paths_outside_allowed_roots_are_refused(server, adapters, client):
    admin = f"{server.url}/v1/adapters"
    for path in (str(adapters["rogue"]), str(adapters["root"] / ".." / "elsewhere" / "rogue"), "/etc"):
        response = httpx.post(admin, json={"name": "rogue", "path": path})
        assert response.status_code == 403, response.text
        assert "outside the allowed folders" in response.json()["error"]["message"]
    assert httpx.post(admin, json={"name": "x", "path": "someone/adapter"}).status_code == 403  # Hub off
    assert "rogue" not in [m.id for m in client.models.list().data]


def test_concurrent_requests_to_two_adapters_never_mix(client, registry):
    expected = {name: alone(registry, name) for name in ("polite", "terse", "base")}
    results: dict[tuple[str, int], str] = {}

    def ask(name: str, i: int) -> None:
        stream = i % 2 == 1
        if stream:
            out = client.completions.create(model=name, prompt=PROMPT, max_tokens=TOKENS, temperature=0, stream=True)
            results[name, i] = "".join(c.choices[0].text for c in out)
        else:
            out = client.completions.create(model=name, prompt=PROMPT, max_tokens=TOKENS, temperature=0)
            results[name, i] = out.choices[0].text

    threads = [threading.Thread(target=ask, args=(name, i)) for i in range(4) for name in ("polite", "terse", "base")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == len(threads)
    for (name, _), text in results.items():
        assert text == expected[name], name


def test_api_key_is_required_when_set(registry):
    with BackgroundServer(create_app(registry, api_key="secret")) as server:
        bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=f"{server.url}/v1", api_key="secret", max_retries=0)
        assert "polite" in [m.id for m in good.models.list().data]


@pytest.mark.parametrize("value", [2**80, -(2**80), 2**64])
@pytest.mark.parametrize(
    ("path", "field", "extra"),
    [
        ("completions", "seed", {"temperature": 1.0}),
        ("chat/completions", "seed", {"temperature": 1.0}),
        ("completions", "max_tokens", {}),
        ("chat/completions", "max_tokens", {}),
        ("chat/completions", "max_completion_tokens", {}),
        ("completions", "n", {}),
        ("completions", "logprobs", {}),
        ("chat/completions", "top_logprobs", {"logprobs": True}),
    ],
)
def test_an_out_of_range_integer_is_a_400_naming_its_field(server, path, field, extra, value):
    """Issue 29: "seed": 2**80 was a 500 (torch's "Overflow when unpacking long long")."""
    body = {"model": "polite", field: value, **extra}
    body |= {"prompt": PROMPT} if path == "completions" else {"messages": [{"role": "user", "content": PROMPT}]}
    reply = httpx.post(f"{server.url}/v1/{path}", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == field and field in error["message"], error
