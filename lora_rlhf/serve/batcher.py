"""Concurrent requests decoded together by one worker thread, each row joining the running batch (issue 15).

Requests put their rows (one per prompt and per `n`) in a bounded queue. The worker owns a DecodeEngine
(inference/engine.py): before every decoding step it admits the oldest queued rows the batch has room for
(`max_batch_size`), then decodes one token of every live row, so a request waits one step for its turn, not
a whole batch. Rows of a batch may use different adapters and "base", options, budgets, stop strings and halts.
Each step holds the registry's lock, so attach and detach happen between steps; the adapter of a live row is
held (AdapterRegistry.hold) until the row ends, so a detach waits for the rows already using it, and rows
queued for it then get its 404. A row halted while queued leaves the queue; one halted while running ends at
its next token while the others go on. A queue already holding `max_queue` rows answers 429.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Generator, Iterator, Sequence

from lora_rlhf.inference.engine import DecodeEngine, Row
from lora_rlhf.inference.generation import Completion, Halted, emit_until_stop
from lora_rlhf.inference.registry import AdapterRegistry
from lora_rlhf.serve.errors import APIError

logger = logging.getLogger(__name__)

# How often a queued request checks whether it was halted (client gone, time up, shutdown), in seconds.
_POLL_S = 0.05


@dataclasses.dataclass(eq=False)
class _Item:
    """One queued row and where its answer goes."""

    row: Row
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: Completion | None = None
    error: BaseException | None = None

    def finish(self, result: Completion | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Batcher:
    """The queue and the worker that serve `registry` in batches; `complete` and `stream` are what requests call."""

    def __init__(
        self, registry: AdapterRegistry, *, max_batch_size: int = 8, max_queue: int = 256, window_s: float = 0.01
    ) -> None:
        self.registry = registry
        self.max_batch_size = max_batch_size  # live rows at once: bounds activation and KV-cache memory
        self.max_queue = max_queue  # rows waiting: bounds the memory of queued prompts (429 beyond)
        self.window_s = window_s  # how long an idle worker waits for more rows before it starts a batch
        self._pending: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None
        self._engine = DecodeEngine(registry.stack)
        self._held: dict[_Item, str] = {}  # live rows -> the adapter they hold in the registry

    # --------------------------------------------------------------- requests
    def complete(self, rows: Sequence[Row]) -> list[Completion]:
        """The Completions of one request's rows, in order; raises Halted if it was called off while queued."""
        items = self._submit(rows)
        try:
            for item in items:
                self._wait(item)
        finally:
            for item in items:
                self._cancel(item)  # the rest of a request that failed or was halted leaves the queue too
        return [item.result for item in items]  # type: ignore[misc]

    def stream(self, row: Row) -> Generator[str, None, Completion]:
        """Queue one row now (so a full queue is a 429 before the stream starts) and return its text pieces; the
        generator's return value is the Completion. Stop strings are held back and cut (emit_until_stop)."""
        pieces: queue.SimpleQueue[str] = queue.SimpleQueue()
        row = dataclasses.replace(row, on_text=pieces.put)
        (item,) = self._submit([row])
        return self._pieces(item, pieces)

    @property
    def queued(self) -> int:
        """Rows waiting for a batch."""
        return len(self._pending)

    def close(self) -> None:
        """Stop the worker once the queue is empty (queued requests are halted by the app's shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ----------------------------------------------------------------- queue
    def _submit(self, rows: Sequence[Row]) -> list[_Item]:
        if len(rows) > self.max_queue:
            raise APIError(
                400, f"{len(rows)} responses in one request exceed the server's queue of {self.max_queue}", None, "n"
            )
        items = [self._item(row, i) for i, row in enumerate(rows)]
        with self._cond:
            if self._closed:
                raise APIError(503, "the server is shutting down", "server_shutting_down")
            if len(self._pending) + len(items) > self.max_queue:
                raise APIError(
                    429,
                    f"the server is busy: {len(self._pending)} responses are queued (--max-queue {self.max_queue}); "
                    "retry later",
                    "server_overloaded",
                )
            self._pending.extend(items)
            self._start_worker()
            self._cond.notify_all()
        return items

    @staticmethod
    def _item(row: Row, index: int) -> _Item:
        # The n choices of a seeded request draw from streams of their own, or they would repeat each other.
        return _Item(dataclasses.replace(row, options=row.options.for_choice(index)))

    def _wait(self, item: _Item) -> None:
        while not item.done.wait(_POLL_S):
            if item.row.halt is not None and item.row.halt() and self._cancel(item):
                raise Halted("generation was called off before it started")
        if item.error is not None:
            raise item.error

    def _cancel(self, item: _Item) -> bool:
        """Take `item` out of the queue; False when it is already running (it then stops at its next token)."""
        with self._cond:
            if item in self._pending:
                self._pending.remove(item)
                return True
        return False

    def _pieces(self, item: _Item, pieces: queue.SimpleQueue[str]) -> Generator[str, None, Completion]:
        def received() -> Iterator[str]:
            while not (item.done.is_set() and pieces.empty()):
                try:
                    yield pieces.get(timeout=_POLL_S)
                except queue.Empty:
                    if item.row.halt is not None and item.row.halt() and self._cancel(item):
                        raise Halted("generation was called off before it started") from None

        yield from emit_until_stop(received(), item.row.options.stop)
        self._wait(item)
        return item.result  # type: ignore[return-value]

    # ---------------------------------------------------------------- worker
    def _start_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run, name="lora-rlhf-batcher", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        while self._work_waiting():
            with self.registry.lock:
                self._admit()
                finished = self._step()
            for item, completion in finished:
                item.finish(completion)

    def _work_waiting(self) -> bool:
        """True at once while rows are live; else wait for queued rows, and up to the batch window for more to join
        the first step. False once closed, with nothing queued or live."""
        if not self._engine.idle:
            return True
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            deadline = time.monotonic() + self.window_s
            while 0 < len(self._pending) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)  # concurrent requests arriving now join the first step
            return bool(self._pending) or not self._closed

    def _admit(self) -> None:
        """Move the oldest queued rows that fit into the batch (under the registry's lock): prefill them."""
        if not self._engine.can_admit():
            return  # a cache that cannot take rows mid-batch: they wait until it drains
        room = self.max_batch_size - len(self._engine.live)
        with self._cond:
            taken = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
        batch = [item for item in taken if self._runnable(item)]
        if not batch:
            return
        for item in batch:
            self._held[item] = self.registry.hold(item.row.role)
        try:
            self._engine.admit([item.row for item in batch], batch)
        except Exception as exc:  # a bug or an out-of-memory in the prefill: these rows get it, live rows go on
            logger.exception("prefilling %d rows failed", len(batch))
            for item in batch:
                self._end(item, error=exc)

    def _step(self) -> list[tuple[_Item, Completion]]:
        if self._engine.idle:
            return []
        try:
            finished = self._engine.step()
        except Exception as exc:  # a bug or an out-of-memory: every live row gets it
            logger.exception("decoding step failed")
            for item in self._engine.abort():
                self._end(item, error=exc)
            return []
        for item, _ in finished:
            self._end(item)
        return finished  # type: ignore[return-value]

    def _end(self, item: _Item, error: BaseException | None = None) -> None:
        """Release the row's adapter (under the registry's lock); hand an error to the request at once."""
        self.registry.release(self._held.pop(item))
        if error is not None:
            item.finish(error=error)

    def _runnable(self, item: _Item) -> bool:
        """Whether a row still wants its answer and its adapter is still attached (else it gets the error)."""
        if item.row.halt is not None and item.row.halt():
            item.finish(error=Halted("generation was called off before it started"))
            return False
        try:
            self.registry.require(item.row.role)
        except Exception as exc:  # UnknownAdapter: detached (or being detached) while the row was queued
            item.finish(error=exc)
            return False
        return True
