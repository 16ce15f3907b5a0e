"""Who may drive the server (issue 29): the Host header on a loopback bind (DNS rebinding), the admin routes beyond
loopback, the API key on every route; driven with raw requests and the `openai` client."""

from __future__ import annotations

import httpx2 as httpx
import openai
import pytest

from lora_rlhf.inference import AdapterRegistry
from lora_rlhf.serve import BackgroundServer, create_app
from lora_rlhf.serve.access import host_name, is_loopback
from lora_rlhf.testing.adapters import make_adapters


@pytest.fixture(scope="module")
def adapters(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("access") / "allowed"
    return {"root": root, **make_adapters(tiny_llama, root, ["one", "two"])}


@pytest.fixture(scope="module")
def registry(tiny_llama):
    return AdapterRegistry.load(tiny_llama, quantization="none", device="cpu")


def serve(registry, adapters, **options) -> BackgroundServer:
    """The app as `lora-rlhf serve --host HOST` makes it; the test server itself listens on 127.0.0.1."""
    return BackgroundServer(create_app(registry, allowed_roots=[adapters["root"]], **options))


def load(server, adapters, name="one", **headers) -> httpx.Response:
    body = {"name": name, "path": str(adapters[name])}
    return httpx.post(f"{server.url}/v1/adapters", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("app.localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("evil.example", False),
        ("localhost.evil.example", False),
        ("", False),
    ],
)
def test_loopback_names(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("header", "name"),
    [("localhost:8000", "localhost"), ("127.0.0.1", "127.0.0.1"), ("[::1]:8000", "::1"), ("::1", "::1")],
)
def test_the_host_header_without_its_port(header, name):
    assert host_name(header) == name


def test_a_loopback_server_refuses_requests_addressed_to_another_name(registry, adapters):
    """DNS rebinding: evil.example resolves to 127.0.0.1, but the browser still sends Host: evil.example."""
    with serve(registry, adapters) as server:
        for path in ("/v1/models", "/health"):
            refused = httpx.get(f"{server.url}{path}", headers={"Host": "evil.example"}, timeout=30)
            assert refused.status_code == 403, refused.text
            error = refused.json()["error"]
            assert error["code"] == "forbidden_host" and "'evil.example' is not this machine" in error["message"]
        refused = httpx.post(
            f"{server.url}/v1/completions",
            json={"model": "base", "prompt": "hi", "max_tokens": 2},
            headers={"Host": "evil.example:80"},
            timeout=30,
        )
        assert refused.status_code == 403
        assert load(server, adapters, Host="evil.example").status_code == 403
        assert "one" not in registry.names
        for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "[::1]"):
            assert httpx.get(f"{server.url}/v1/models", headers={"Host": host}, timeout=30).status_code == 200
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)
        assert client.completions.create(model="base", prompt="hi", max_tokens=2).choices[0].text is not None
        assert load(server, adapters).status_code == 201  # on loopback, no key needed
        assert httpx.delete(f"{server.url}/v1/adapters/one", timeout=30).status_code == 200


def test_beyond_loopback_the_admin_routes_need_an_api_key(registry, adapters):
    with serve(registry, adapters, host="0.0.0.0") as server:
        refused = load(server, adapters)
        assert refused.status_code == 403, refused.text
        assert "needs an API key" in refused.json()["error"]["message"] and "one" not in registry.names
        assert httpx.delete(f"{server.url}/v1/adapters/base", timeout=30).status_code == 403
        # The other routes serve any name: the server was bound to be reached from elsewhere.
        listed = httpx.get(f"{server.url}/v1/models", headers={"Host": "gpu-box.lan"}, timeout=30)
        assert listed.status_code == 200
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)
        assert client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        ).choices
        with pytest.raises(openai.PermissionDeniedError):
            client.post("/adapters", body={"name": "two", "path": str(adapters["two"])}, cast_to=object)


def test_beyond_loopback_with_a_key_every_route_needs_it(registry, adapters):
    with serve(registry, adapters, host="0.0.0.0", api_key="s3cret") as server:
        assert load(server, adapters).status_code == 401
        assert load(server, adapters, Authorization="Bearer wrong").status_code == 401
        assert httpx.get(f"{server.url}/v1/models", timeout=30).status_code == 401
        assert load(server, adapters, Authorization="Bearer s3cret").status_code == 201
        good = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret", max_retries=0, timeout=60)
        assert "one" in [m.id for m in good.models.list().data]
        assert good.completions.create(model="one", prompt="hi", max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
        deleted = httpx.delete(f"{server.url}/v1/adapters/one", headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert deleted.status_code == 200 and "one" not in registry.names


def test_the_api_key_comes_from_the_environment_too(monkeypatch):
    from lora_rlhf.cli.main import build_parser

    monkeypatch.setenv("LORA_RLHF_API_KEY", "from-env")
    assert build_parser().parse_args(["serve", "--base", "tiny:llama"]).api_key == "from-env"


def test_an_adapter_naming_another_base_is_loaded_with_a_warning(registry, adapters, tmp_path, caplog):
    """Issue 29: POST /v1/adapters of an adapter trained on another base said nothing (its shapes fit)."""
    import json
    import shutil

    other = tmp_path / "allowed" / "other"
    shutil.copytree(adapters["two"], other)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "org/Other-1B"}))
    with BackgroundServer(create_app(registry, allowed_roots=[tmp_path / "allowed"])) as server:
        with caplog.at_level("WARNING", logger="lora_rlhf.models.adapter_io"):
            response = httpx.post(f"{server.url}/v1/adapters", json={"name": "other", "path": str(other)}, timeout=30)
        assert response.status_code == 201, response.text
        assert "trained on org/Other-1B, not on this base" in caplog.text
        assert httpx.delete(f"{server.url}/v1/adapters/other", timeout=30).status_code == 200
