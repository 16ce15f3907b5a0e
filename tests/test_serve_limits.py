"""One request cannot stall the server (issue 12): bounded budgets, time limits, disconnects, shutdown, bad input.

The tiny model answers in milliseconds, so a `Pace` slows every forward pass and forbids the end-of-response
ids: a response then runs for as long as its budget says (0.1 s a token), which makes a stalled lock visible.
Timings are generous (the machine is shared); the assertions are about order and about generation stopping.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
import torch

from lora_rlhf.inference import AdapterRegistry, GenerationOptions
from lora_rlhf.inference.generation import Halted
from lora_rlhf.serve import BackgroundServer, create_app
from lora_rlhf.serve.errors import APIError
from lora_rlhf.serve.limits import Halt, InFlight, ServeLimits, token_budget
from lora_rlhf.testing.adapters import make_adapters

PROMPT = "sort the numbers 3 1 2"
LONG = 400  # tokens of a long response: 40 s at the Pace below, if nothing stops it
CONTEXT = 512  # max_position_embeddings of the tiny test model


class Pace:
    """Counts forward passes of the base, sleeps `delay` in each, and masks the end-of-response logits."""

    def __init__(self, registry: AdapterRegistry) -> None:
        self.delay = 0.0
        self.calls = 0
        self._ends = torch.tensor(sorted(registry.stack.eos_ids()))
        registry.stack.base_model.register_forward_pre_hook(self._step)
        registry.stack.base_model.get_output_embeddings().register_forward_hook(self._never_end)

    def _step(self, module, args) -> None:
        self.calls += 1
        time.sleep(self.delay)

    def _never_end(self, module, args, logits: torch.Tensor) -> torch.Tensor:
        return logits.index_fill_(-1, self._ends.to(logits.device), float("-inf"))

    def settled(self, wait: float = 1.0) -> bool:
        """Whether no forward pass runs any more (none during `wait` seconds)."""
        before = self.calls
        time.sleep(wait)
        return self.calls == before

    def started(self, calls: int = 3, timeout: float = 30.0) -> None:
        start = self.calls
        deadline = time.monotonic() + timeout
        while self.calls < start + calls:
            assert time.monotonic() < deadline, "generation did not start"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def adapters(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    return {"root": root, **make_adapters(tiny_llama, root, ["polite"])}


@pytest.fixture(scope="module")
def registry(tiny_llama, adapters):
    registry = AdapterRegistry.load(tiny_llama, quantization="none", device="cpu")
    registry.attach("polite", adapters["polite"])
    return registry


@pytest.fixture(scope="module")
def pace(registry):
    return Pace(registry)


@pytest.fixture()
def slow(pace):
    pace.delay = 0.1
    yield pace
    pace.delay = 0.0


def serve(registry, **limits) -> BackgroundServer:
    return BackgroundServer(create_app(registry, allowed_roots=[], limits=ServeLimits(**limits)))


def client_of(server: BackgroundServer, timeout: float = 20.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=timeout)


def chat(client: openai.OpenAI, max_tokens: int | None, content: str = PROMPT, **kwargs):
    return client.chat.completions.create(
        model="polite", messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0, **kwargs
    )


def in_thread(call) -> tuple[threading.Thread, dict]:
    """Run `call()` in a thread; its result or exception lands in the returned dict, with the time it finished."""
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = call()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out["error"] = exc
        out["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# ----------------------------------------------------------------------------------------- budgets
def test_token_budget_by_hand():
    assert token_budget(None, 256, 500, 512, 4096, "messages") == 12  # an unset budget shrinks to the room left
    assert token_budget(None, 16, 10, None, 4096, "prompt") == 16
    assert token_budget(100, 16, 10, 512, 4096, "prompt") == 100
    assert token_budget(502, 16, 10, 512, 4096, "prompt") == 502
    for requested, prompt, code, param in [
        (503, 10, "context_length_exceeded", "max_tokens"),
        (5000, 10, "max_tokens_too_large", "max_tokens"),
        (None, 512, "context_length_exceeded", "prompt"),
    ]:
        with pytest.raises(APIError) as err:
            token_budget(requested, 16, prompt, 512, 4096, "prompt")
        assert (err.value.status, err.value.code, err.value.param) == (400, code, param)


def test_halt_flags():
    halt = Halt(timeout=0.2)
    assert not halt() and halt.reason is None
    time.sleep(0.3)
    assert halt() and halt.reason == "timeout"
    inflight = InFlight()
    with inflight.track(None) as running:
        inflight.halt_all()
        assert running() and running.reason == "shutdown"
        with pytest.raises(APIError) as err, inflight.track(None):
            pass
        assert err.value.status == 503


def test_a_request_halted_while_it_waited_does_not_generate(registry, pace):
    calls = pace.calls
    with pytest.raises(Halted):
        registry.complete("polite", [PROMPT], GenerationOptions(max_new_tokens=4), halt=lambda: True)
    assert pace.calls == calls
    halted_later = iter([False, False, True]).__next__  # asked before starting, then once per token
    done = registry.complete("polite", [PROMPT], GenerationOptions(max_new_tokens=50), halt=halted_later)
    assert done[0].finish_reason == "length" and done[0].completion_tokens == 2


def test_context_length_is_the_models(registry):
    # The config says 512; the tokenizer sets no limit (transformers reports 1e30), which is not a limit.
    assert registry.stack.tokenizer.model_max_length > 10**20
    assert registry.context_length == CONTEXT


def test_huge_max_tokens_is_400_and_the_default_fits_the_context(registry, pace):
    with serve(registry, max_tokens=300) as server:
        client = client_of(server)
        for max_tokens, code in [(1_000_000_000, "max_tokens_too_large"), (301, "max_tokens_too_large")]:
            with pytest.raises(openai.BadRequestError) as err:
                chat(client, max_tokens)
            assert err.value.body["code"] == code and err.value.body["param"] == "max_tokens", err.value.body
        assert chat(client, 300).usage.completion_tokens == 300  # the limit itself is allowed
    with serve(registry, max_tokens=4096) as server:
        client = client_of(server)
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="polite", prompt=PROMPT, max_tokens=CONTEXT)
        assert err.value.body["code"] == "context_length_exceeded" and str(CONTEXT) in err.value.body["message"]
        # No max_tokens: the chat default (256) shrinks to what the ~500-token prompt leaves of the context.
        prompt = "a " * 240
        assert 0 < CONTEXT - registry.count_tokens(registry.render(prompt)) < 256
        out = chat(client, None, prompt)
        assert 0 < out.usage.completion_tokens and out.usage.prompt_tokens + out.usage.completion_tokens == CONTEXT
        assert out.choices[0].finish_reason == "length"


def test_prompt_longer_than_the_context_is_400_while_others_are_served(registry, slow):
    huge = "hello world " * 175_000  # 2 MB
    with serve(registry) as server:
        client = client_of(server)
        small, small_out = in_thread(lambda: chat(client, 2))
        for call in (
            lambda: chat(client, 2, huge),
            lambda: client.completions.create(model="polite", prompt=[PROMPT, huge]),
        ):
            with pytest.raises(openai.BadRequestError) as err:
                call()
            body = err.value.body
            assert body["code"] == "context_length_exceeded" and body["param"] in ("messages", "prompt"), body
            assert body["type"] == "invalid_request_error"
        small.join(timeout=30)
        assert small_out["result"].usage.completion_tokens == 2


# ------------------------------------------------------------------------------------- time limit
def test_time_limit_cuts_a_long_response_and_a_request_joining_it_is_served(registry, slow):
    with serve(registry, request_timeout=3.0) as server:
        client = client_of(server, timeout=25)
        long, long_out = in_thread(lambda: chat(client, LONG))
        slow.started(calls=10)
        small, small_out = in_thread(lambda: client.completions.create(model="polite", prompt=PROMPT, max_tokens=1))
        long.join(timeout=30)
        small.join(timeout=30)
        reply = long_out["result"]
        assert reply.choices[0].finish_reason == "length"
        assert 0 < reply.usage.completion_tokens < LONG / 2  # about 30 tokens in 3 s, nowhere near 400
        assert small_out["result"].choices[0].finish_reason == "length"
        assert small_out["at"] < long_out["at"]  # it joined the running batch: answered while the long one ran
        stream = chat(client, LONG, stream=True)
        finishes = [c.choices[0].finish_reason for c in stream if c.choices]
        assert finishes[-1] == "length" and len(finishes) < LONG / 2
    assert slow.settled()


# ------------------------------------------------------------------------------------- disconnect
def test_a_client_that_leaves_stops_its_generation(registry, slow):
    with serve(registry, request_timeout=None) as server:
        with pytest.raises(openai.APITimeoutError):
            chat(client_of(server, timeout=1.5), LONG)  # gives up after 1.5 s; 40 s of generation were asked for
        # The lock is free again within a token or two: a small request does not wait for the abandoned one.
        assert chat(client_of(server, timeout=20), 2).usage.completion_tokens == 2
        assert slow.settled()
        # Streaming: the client closes the stream after a few chunks.
        stream = chat(client_of(server), LONG, stream=True)
        for _, _chunk in zip(range(3), stream):
            pass
        stream.close()
        assert chat(client_of(server, timeout=20), 2).usage.completion_tokens == 2
        assert slow.settled()


def test_a_client_that_leaves_its_batch_does_not_stall_the_others(registry, slow):
    """Two requests in one batch: the one whose client gives up ends there, the other gets its whole budget."""
    with serve(registry, request_timeout=None, max_batch_size=4, batch_window_s=1.0) as server:
        kept, kept_out = in_thread(lambda: chat(client_of(server, timeout=60), 30))
        left, left_out = in_thread(lambda: chat(client_of(server, timeout=2.0), LONG))
        left.join(timeout=30)
        kept.join(timeout=60)
        assert isinstance(left_out["error"], openai.APITimeoutError)
        assert kept_out["result"].usage.completion_tokens == 30
        assert kept_out["at"] - left_out["at"] < 20  # 30 tokens in all, not the 400 the other asked for
        assert slow.settled()


def test_a_time_limit_cuts_one_row_of_a_batch(registry, slow):
    with serve(registry, request_timeout=3.0, max_batch_size=4, batch_window_s=1.0) as server:
        client = client_of(server, timeout=30)
        short, short_out = in_thread(lambda: chat(client, 5))
        long, long_out = in_thread(lambda: chat(client, LONG))
        short.join(timeout=30)
        long.join(timeout=30)
        assert short_out["result"].usage.completion_tokens == 5
        reply = long_out["result"]
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens < LONG / 2
    assert slow.settled()


# --------------------------------------------------------------------------------------- shutdown
def test_shutdown_stops_running_generation_within_seconds(registry, slow):
    server = serve(registry, request_timeout=None).start()
    long, long_out = in_thread(lambda: chat(client_of(server, timeout=60), LONG))
    slow.started()
    started = time.monotonic()
    server.stop()
    long.join(timeout=10)
    assert not long.is_alive(), "the running request was not answered on shutdown"
    assert long_out["at"] - started < 8.0  # a token or two, not the 40 s the request asked for
    reply = long_out["result"]
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens < LONG / 2
    assert slow.settled()


_SIGTERM_SERVER = """
import sys
sys.path.insert(0, sys.argv[3])
from lora_rlhf.inference import AdapterRegistry
from lora_rlhf.serve import create_app, run_server
from test_serve_limits import Pace
registry = AdapterRegistry.load(sys.argv[1], quantization="none", device="cpu")
Pace(registry).delay = 0.1
run_server(create_app(registry), port=int(sys.argv[2]), log_level="warning")
"""


def test_sigterm_stops_running_generation_within_seconds(tiny_llama):
    """`lora-rlhf serve` runs run_server: SIGTERM answers the running request and exits, without waiting 40 s."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_SERVER, tiny_llama, str(port), str(Path(__file__).parent)]
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)
        long, long_out = in_thread(
            lambda: client.chat.completions.create(
                model="base", messages=[{"role": "user", "content": PROMPT}], max_tokens=LONG, temperature=0
            )
        )
        time.sleep(2.0)  # about 20 tokens in
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        long.join(timeout=10)
        assert long_out["at"] - signalled < 8.0 and time.monotonic() - signalled < 15.0
        reply = long_out["result"]
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens < LONG / 2
    finally:
        process.kill()
        process.wait()


# -------------------------------------------------------------------------------------- bad input
def test_lone_surrogate_is_400_in_openai_shape(registry):
    # The openai client cannot send one (it encodes UTF-8); a JSON client that escapes UTF-16 can.
    bodies = {
        "chat/completions": (
            '{"model": "polite", "max_tokens": 2, "messages": [{"role": "user", "content": "a\\ud800b"}]}'
        ),
        "completions": '{"model": "polite", "max_tokens": 2, "prompt": ["ok", "\\udfff"]}',
    }
    with serve(registry) as server:
        for endpoint, body in bodies.items():
            response = httpx.post(
                f"{server.url}/v1/{endpoint}",
                content=body.encode(),
                headers={"content-type": "application/json"},
                timeout=20,
            )
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error" and "surrogate" in error["message"], error
        assert chat(client_of(server), 2).usage.completion_tokens == 2


def test_empty_adapter_weights_is_400_in_openai_shape(registry, adapters, tmp_path):
    broken = tmp_path / "allowed" / "broken"
    shutil.copytree(adapters["polite"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"")
    app = create_app(registry, allowed_roots=[tmp_path / "allowed"])
    with BackgroundServer(app) as server:
        response = httpx.post(f"{server.url}/v1/adapters", json={"name": "broken", "path": str(broken)}, timeout=20)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and "broken" in error["message"], error
        assert "broken" not in [m.id for m in client_of(server).models.list().data]
