"""Concurrent requests gathered into mixed-adapter batches by one worker thread (issue 15).

Requests put their rows (one per prompt and per `n`) in a bounded queue; the worker takes the oldest row
and every queued row that can share its `generate` (same `sampling_key`, up to `max_batch_size`), and runs
them as one batch under the registry's lock, so attach and detach happen between batches. Rows of a batch
may use different adapters and "base" (PEFT's mixed-adapter batches), budgets, stop strings and halts
(inference/batched.py). A row halted while queued leaves the queue; one halted while running ends at its
next token while the others go on. A queue already holding `max_queue` rows answers 429.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections.abc import Generator, Hashable, Iterator, Sequence

from lora_rlhf.inference.batched import Row, generate_rows, sampling_key
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
    key: Hashable
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
        self.max_batch_size = max_batch_size  # rows in one generate: bounds activation and KV-cache memory
        self.max_queue = max_queue  # rows waiting: bounds the memory of queued prompts (429 beyond)
        self.window_s = window_s  # how long an idle worker waits for more rows before it starts a batch
        self._pending: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None
        self._requests = itertools.count()

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
        request = next(self._requests)
        items = [self._item(row, request, i) for i, row in enumerate(rows)]
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

    def _item(self, row: Row, request: int, index: int) -> _Item:
        # A seeded request larger than a batch is split; each part gets its own seed, or they would repeat each other.
        part = index // self.max_batch_size
        if part and row.options.seed is not None and not row.options.greedy:
            row = dataclasses.replace(row, options=dataclasses.replace(row.options, seed=row.options.seed + part))
        return _Item(row, sampling_key(row, (request, part)))

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
        while self._rows_waiting():
            # Rows leave the queue only once the lock is won: while an attach or detach holds it, they still count
            # towards --max-queue, and rows arriving meanwhile join the batch.
            with self.registry.lock:
                batch = [item for item in self._take() if self._runnable(item)]
                done = self._generate(batch) if batch else None
            for item, completion in zip(batch, done or (), strict=False):
                item.finish(completion)

    def _rows_waiting(self) -> bool:
        """Wait for queued rows, and up to the batch window for more to join; False once closed and empty."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            deadline = time.monotonic() + self.window_s
            while 0 < len(self._pending) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)  # concurrent requests arriving now join this batch
            return bool(self._pending) or not self._closed

    def _take(self) -> list[_Item]:
        """The oldest queued row and the queued rows that can share its generate, out of the queue."""
        with self._cond:
            if not self._pending:
                return []
            key = self._pending[0].key
            batch = [item for item in self._pending if item.key == key][: self.max_batch_size]
            for item in batch:
                self._pending.remove(item)
        return batch

    def _generate(self, batch: list[_Item]) -> list[Completion] | None:
        started = time.monotonic()
        try:
            done = generate_rows(self.registry.stack, [item.row for item in batch])
        except Exception as exc:  # a bug or an out-of-memory: every row of the batch gets it
            logger.exception("batched generation failed")
            for item in batch:
                item.finish(error=exc)
            return None
        logger.debug("batch of %d rows in %.3f s", len(batch), time.monotonic() - started)
        return done

    def _runnable(self, item: _Item) -> bool:
        """Whether a row still wants its answer and its adapter is still attached (else it gets the error)."""
        if item.row.halt is not None and item.row.halt():
            item.finish(error=Halted("generation was called off before it started"))
            return False
        try:
            self.registry.require(item.row.role)
        except Exception as exc:  # UnknownAdapter: detached while the row was queued
            item.finish(error=exc)
            return False
        return True
