"""`lora-rlhf push` against a loopback fake of the Hub API that records every request."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from lora_rlhf.cli.main import main
from lora_rlhf.testing.adapters import make_run_dir

TOKEN = "hf_testtoken_d0n0tl3ak_1234567890"
EVAL = {
    "prompts": 3,
    "gold": {"base": 0.2, "sft": 0.5, "ppo": 0.7},
    "win_rate": {"ppo_vs_sft": 0.6},
    "kl": 1.5,
    "rm_accuracy": 0.8,
}


class FakeHub(BaseHTTPRequestHandler):
    """The endpoints HfApi.create_repo and create_commit call: repos/create, validate-yaml, preupload, commit."""

    requests: list[dict]
    status = 200

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.requests.append(
            {
                "method": "POST",
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
            }
        )
        if self.status != 200:
            return self._json(self.status, {"error": "Invalid credentials in Authorization header"})
        path = self.path.split("?")[0]
        if path == "/api/repos/create":
            payload = json.loads(body)
            return self._json(
                200, {"url": f"http://{self.headers['host']}/{payload['organization']}/{payload['name']}"}
            )
        if path == "/api/validate-yaml":
            return self._json(200, {"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return self._json(
                200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if "/commit/" in path:
            repo = path.removeprefix("/api/models/").split("/commit/")[0]
            return self._json(
                200, {"commitUrl": f"http://{self.headers['host']}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40}
            )
        return self._json(404, {"error": f"no route {path}"})

    def do_GET(self) -> None:  # noqa: N802
        self.requests.append(
            {
                "method": "GET",
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": b"",
            }
        )
        self._json(self.status if self.status != 200 else 404, {"error": "not found"})

    def _json(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def hub(monkeypatch):
    handler = type("Handler", (FakeHub,), {"requests": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "0")
    yield handler
    server.shutdown()


@pytest.fixture(scope="module")
def run_dir(tiny_llama, tmp_path_factory):
    run = make_run_dir(tiny_llama, tmp_path_factory.mktemp("pushrun") / "run", ("sft", "policy"), eval_figures=EVAL)
    recipe = {
        "model": {"name_or_path": "demo:smollm2"},
        "sft": {"data": {"path": "Anthropic/hh-rlhf", "split": "train"}},
    }
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return run


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def committed_files(hub) -> dict[str, bytes]:
    (commit,) = [r for r in hub.requests if "/commit/" in r["path"]]
    lines = [json.loads(line) for line in commit["body"].splitlines()]
    assert lines[0]["key"] == "header"
    files = {
        item["value"]["path"]: base64.b64decode(item["value"]["content"]) for item in lines if item["key"] == "file"
    }
    return {"__summary__": lines[0]["value"]["summary"].encode(), **files}


def front_matter(readme: bytes) -> dict:
    text = readme.decode()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_push_run_uploads_every_role_with_cards(hub, run_dir, capfd):
    before = digest(run_dir)
    code = main(["push", str(run_dir), "--repo-id", "me/rlhf-run", "--private", "-m", "first version"])
    assert code == 0
    out, err = capfd.readouterr()
    assert "pushed:" in out
    assert TOKEN not in out + err
    create = json.loads(next(r for r in hub.requests if r["path"] == "/api/repos/create")["body"])
    assert create["name"] == "rlhf-run" and create["organization"] == "me" and create.get("visibility") == "private"
    assert all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)
    files = committed_files(hub)
    assert files.pop("__summary__") == b"first version"
    for role in ("sft", "policy"):
        assert (
            files[f"{role}/adapter_model.safetensors"]
            == (run_dir / "adapters" / role / "adapter_model.safetensors").read_bytes()
        )
        config = json.loads(files[f"{role}/adapter_config.json"])
        assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert files["eval.json"] == (run_dir / "eval.json").read_bytes()
    meta = front_matter(files["policy/README.md"])
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["library_name"] == "peft"
    assert {"lora", "rlhf", "ppo"} <= set(meta["tags"])
    assert meta["datasets"] == ["Anthropic/hh-rlhf"]
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["gold.ppo"] == 0.7 and metrics["kl"] == 1.5
    card = files["policy/README.md"].decode()
    assert 'PeftModel.from_pretrained(base, "me/rlhf-run", subfolder="policy")' in card
    assert "| gold.ppo | 0.7 |" in card
    assert "README.md" in files and front_matter(files["README.md"])["library_name"] == "peft"
    assert digest(run_dir) == before


def test_dry_run_lists_files_and_sends_nothing(hub, run_dir, capfd):
    assert main(["push", str(run_dir), "--repo-id", "me/rlhf-run", "--role", "policy", "--dry-run"]) == 0
    out, err = capfd.readouterr()
    assert "would upload" in out
    for name in (
        "policy/adapter_model.safetensors",
        "policy/adapter_config.json",
        "policy/README.md",
        "eval.json",
        "README.md",
    ):
        assert name in out
    assert "sft/" not in out
    assert hub.requests == []
    assert TOKEN not in out + err


def test_single_adapter_folder_goes_to_the_repo_root(hub, run_dir, capfd):
    folder = run_dir / "adapters" / "sft"
    assert main(["push", str(folder), "--repo-id", "me/sft-only", "--base-model", "org/base"]) == 0
    files = committed_files(hub)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    assert front_matter(files["README.md"])["base_model"] == "org/base"
    assert "sft" in front_matter(files["README.md"])["tags"]
    assert "private" not in json.loads(hub.requests[0]["body"]).get("visibility", "")


def test_auth_failure_is_one_line_and_leaves_files_alone(hub, run_dir, capfd):
    hub.status = 401
    before = digest(run_dir)
    assert main(["push", str(run_dir), "--repo-id", "me/rlhf-run"]) == 2
    out, err = capfd.readouterr()
    error = err.strip().splitlines()
    assert len(error) == 1 and "refused the token (HTTP 401)" in error[0]
    assert TOKEN not in out + err
    assert digest(run_dir) == before


def test_unreachable_endpoint_is_one_line(hub, run_dir, capfd, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    before = digest(run_dir)
    assert main(["push", str(run_dir), "--repo-id", "me/rlhf-run"]) == 2
    out, err = capfd.readouterr()
    error = err.strip().splitlines()
    assert len(error) == 1 and f"cannot reach the Hub at http://127.0.0.1:{port}" in error[0]
    assert TOKEN not in out + err
    assert digest(run_dir) == before


def test_missing_token_and_bad_repo_id(hub, run_dir, capfd, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no stored login either
    assert main(["push", str(run_dir), "--repo-id", "me/x"]) == 2
    assert "no Hugging Face token" in capfd.readouterr().err
    assert main(["push", str(run_dir), "--repo-id", "not a repo"]) == 2
    assert "owner/name" in capfd.readouterr().err
    assert hub.requests == []


def test_token_is_never_written(hub, run_dir, tmp_path):
    main(["push", str(run_dir), "--repo-id", "me/rlhf-run"])
    for folder in (run_dir, tmp_path):
        for path in folder.rglob("*"):
            assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path
