"""The model server's scheduler: every request runs on one worker thread, step by step, in turn.

A model that is not thread-safe is shared by queueing work for one worker thread.
Requests that arrive together and share sampling settings form a *batch* — one engine
call, the fast way on a CPU, where a batch of 8 costs little more than one request.
So that one long request cannot starve short ones, the worker does not run a batch to
its end: it holds up to ``max_batches`` of them and advances each by one decode step in
turn (valign's engine yields after every step; other backends after every model call),
starting new batches as requests arrive. A 4-token "Hi" then answers after its own few
steps, while an 8,000-token answer goes on beside it. A request whose client went away
(`Job.cancel`) is dropped at the next step, and `Batcher.stop` drops every request
within one step.

For valign's own backends, requests that differ only in ``seed`` or ``n`` share a
batch: every sample gets its own seed, exactly the one ``model.generate`` would give
it, so answers do not depend on what else was in the batch.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

from valign.errors import ValignError
from valign.models.base import BaseChatModel, ChatModel, GenRequest, conv_key, sample_seed
from valign.serve_limits import DEFAULT_LIMITS
from valign.types import Completion, Conversation, GenConfig

__all__ = ["Batcher", "Job", "Cancelled", "ContinuingView", "BATCH_WINDOW", "MAX_BATCH_JOBS"]

BATCH_WINDOW = 0.005  # seconds an idle worker waits for more requests before a batch starts
MAX_BATCH_JOBS = 256  # requests taken into one batch; the engine splits them by its token budget


class Cancelled(ValignError):
    """The request was dropped before it finished: its client left, or the server is stopping."""


@dataclass
class Job:
    """One request: its conversation and settings, the future its completions go to, and
    a flag the worker reads at every step (`cancel`)."""

    conv: Conversation
    cfg: GenConfig
    continue_final: bool = False
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    dropped: threading.Event = field(default_factory=threading.Event)

    def cancel(self, reason: str = "the client closed the connection") -> None:
        """Stop this request at the worker's next step (its future fails with `Cancelled`)."""
        self.dropped.set()
        # An exception rather than future.cancel(): a handler awaiting the future gets a
        # sentence to answer with, not a cancellation of its own task.
        _fail(self.future, Cancelled(reason))

    def take(self) -> bool:
        """Marks the request as running; False when it was dropped (or its future cancelled) first."""
        return not self.dropped.is_set() and not self.future.done() and self.future.set_running_or_notify_cancel()


def _fail(future: concurrent.futures.Future, error: BaseException) -> None:
    if not future.done():
        try:
            future.set_exception(error)
        except concurrent.futures.InvalidStateError:  # cancelled meanwhile
            pass


def _finish(future: concurrent.futures.Future, result: Any) -> None:
    if not future.done():
        try:
            future.set_result(result)
        except concurrent.futures.InvalidStateError:
            pass


_STOP = object()


class Batcher:
    """Runs queued requests on the model from one worker thread (see the module docstring).

    ``batches`` counts batches started (model calls) and ``jobs`` requests served.

    Example (loads the embedded model)::

        batcher = Batcher(load_model("embedded"))
        future = batcher.submit([{"role": "user", "content": "Hi"}], GenConfig(max_new_tokens=8))
        future.result()[0].text
    """

    def __init__(
        self, model: ChatModel, *, window: float = BATCH_WINDOW, max_jobs: int = MAX_BATCH_JOBS, max_batches: int = DEFAULT_LIMITS.max_batches
    ) -> None:
        self.model = model
        self.window = window
        self.max_jobs = max_jobs
        self.max_batches = max_batches
        self.batches = 0
        self.jobs = 0
        self._queue: queue.Queue = queue.Queue()  # the running worker's queue
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def can_continue(self) -> bool:
        """Whether the model can continue a partial assistant message (needs prompt rendering)."""
        return isinstance(self.model, BaseChatModel) and callable(getattr(self.model, "render", None))

    def submit(self, conv: Conversation, cfg: GenConfig, continue_final: bool = False) -> concurrent.futures.Future:
        """Queues one request; the future resolves to its ``cfg.n`` completions."""
        return self.enqueue(conv, cfg, continue_final).future

    def enqueue(self, conv: Conversation, cfg: GenConfig, continue_final: bool = False) -> Job:
        """Queues one request and returns it, so that it can be cancelled (`Job.cancel`)."""
        job = Job(conv, cfg, continue_final)
        with self._lock:
            if self._stopping.is_set():
                _fail(job.future, Cancelled("the server is shutting down"))
                return job
            self._start_locked()
            self._queue.put(job)
        return job

    def start(self) -> None:
        with self._lock:
            self._stopping.clear()
            self._start_locked()

    def stop(self, timeout: float | None = None) -> None:
        """Drops every request at the next step (their futures fail with `Cancelled`) and
        stops the worker; waits for it at most ``timeout`` seconds."""
        self._stopping.set()
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)

    def begin_stop(self) -> None:
        """Marks the server as stopping (safe from a signal handler): no request is
        taken any more and the ones running are dropped at their next step."""
        self._stopping.set()

    def _start_locked(self) -> None:
        if self._thread is None:
            # Each worker gets its own queue, so a worker started right after a stop()
            # can never take the stop signal meant for the old one.
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._loop, args=(self._queue,), name="valign-serve-batcher", daemon=True)
            self._thread.start()

    def _loop(self, jobs_in: queue.Queue) -> None:
        active: list[_Batch] = []
        pending: deque[Job] = deque()
        while True:
            idle = not active and not pending
            try:
                first = jobs_in.get(timeout=0.2) if idle else jobs_in.get_nowait()
            except queue.Empty:
                first = None
            arrived = [] if first is None else [first]
            if idle and first is not None and first is not _STOP:
                time.sleep(self.window)  # let a burst of requests arrive and share a batch
            while True:
                try:
                    arrived.append(jobs_in.get_nowait())
                except queue.Empty:
                    break
            stop_now = _STOP in arrived
            pending.extend(j for j in arrived if j is not _STOP)
            if stop_now or self._stopping.is_set():
                for job in [*pending, *(j for b in active for j in b.jobs)]:
                    job.cancel("the server is shutting down")
                for batch in active:
                    batch.close()
                if stop_now:
                    return
                active, pending = [], deque()
                continue
            while pending and len(active) < self.max_batches:
                batch = self._start_batch(pending)
                if batch is not None:
                    active.append(batch)
            for batch in list(active):
                if batch.step():
                    active.remove(batch)
                    self.jobs += batch.served

    def _start_batch(self, pending: deque[Job]) -> "_Batch | None":
        """A batch of the oldest waiting request and those (up to ``max_jobs``) that can share its model call."""
        first = pending.popleft()
        if not first.take():
            return None
        key = self._group_key(first)
        jobs, rest = [first], deque()
        while pending:
            job = pending.popleft()
            if len(jobs) < self.max_jobs and self._group_key(job) == key:
                if job.take():
                    jobs.append(job)
            else:
                rest.append(job)
        pending.extend(rest)
        self.batches += 1
        return _Batch(self.model, jobs)

    def _group_key(self, job: Job) -> tuple:
        if isinstance(self.model, BaseChatModel):
            return (job.cfg.model_copy(update={"seed": None, "n": 1}), job.continue_final)
        return (job.cfg, job.continue_final)


class _Batch:
    """Requests sharing one model call, advanced one step at a time by `step`."""

    def __init__(self, model: ChatModel, jobs: list[Job]) -> None:
        self.model = model
        self.jobs = jobs
        self.served = 0
        self._steps: Iterator[None] = self._run()

    def step(self) -> bool:
        """Advances the batch by one step; True once every request in it is answered or dropped."""
        if all(j.dropped.is_set() for j in self.jobs):
            self.close()
            return True
        try:
            next(self._steps)
        except StopIteration:
            return True
        except BaseException as e:  # every waiting client gets the error, the worker lives on
            for job in self.jobs:
                _fail(job.future, e)
            return True
        return False

    def close(self) -> None:
        self._steps.close()  # type: ignore[attr-defined]
        for job in self.jobs:
            _fail(job.future, Cancelled("the request was dropped"))

    def _run(self) -> Iterator[None]:
        model = self.model
        if not isinstance(model, BaseChatModel):
            flat = model.generate([j.conv for j in self.jobs], self.jobs[0].cfg)
            n = self.jobs[0].cfg.n
            for k, job in enumerate(self.jobs):
                self._answer(job, flat[k * n : (k + 1) * n])
            return
        yield from self._run_base(model)

    def _answer(self, job: Job, comps: list[Completion]) -> None:
        if not job.future.done():
            self.served += 1
        _finish(job.future, comps)

    def _run_base(self, model: BaseChatModel) -> Iterator[None]:
        """Every sample of every request through the backend's step primitive, through its cache."""
        requests: list[GenRequest] = []
        keys: list[str | None] = []
        for k, job in enumerate(self.jobs):
            conv = conv_key(job.conv)
            for j in range(job.cfg.n):
                req = GenRequest(k, j, conv, sample_seed(job.cfg.seed, conv, j))
                requests.append(req)
                # A continued message renders differently from the same messages
                # answered anew, so it must not share their cache entries.
                keys.append(None if job.continue_final else model._cache_key(req, job.cfg))
        results: list[Completion | None] = [None] * len(requests)
        missing = [job.cfg.n for job in self.jobs]  # samples still to come, per request
        if model.cache is not None:
            hits = model.cache.get_many([k for k in keys if k is not None])
            for pos, key in enumerate(keys):
                if key in hits:
                    results[pos] = Completion.model_validate(hits[key]).model_copy(update={"cached": True})
                    missing[requests[pos].index] -= 1
        self._answer_complete(requests, results, missing)
        todo = [pos for pos, r in enumerate(results) if r is None]
        if not todo:
            return
        shared = self.jobs[0].cfg.model_copy(update={"seed": None, "n": 1})
        runner = ContinuingView(model) if self.jobs[0].continue_final else model
        dropped = lambda local: self.jobs[requests[todo[local]].index].dropped.is_set()  # noqa: E731
        for batch in type(model).generate_steps(runner, [requests[p] for p in todo], shared, dropped):  # type: ignore[arg-type]
            stored = []
            for local, comp in batch:
                pos = todo[local]
                req = requests[pos]
                comp = comp.model_copy(update={"index": req.index, "sample": req.sample, "model": model.name})
                results[pos] = comp
                missing[req.index] -= 1
                # A dropped request's rows may have stopped early: never cache those.
                if keys[pos] is not None and not self.jobs[req.index].dropped.is_set():
                    stored.append((keys[pos], comp.model_dump(exclude={"cached"})))
            if model.cache is not None and stored:
                model.cache.put_many(stored)
            self._answer_complete(requests, results, missing)
            yield

    def _answer_complete(self, requests: list[GenRequest], results: list[Completion | None], missing: list[int]) -> None:
        """Answers each request whose samples are all there, as soon as they are."""
        for k, job in enumerate(self.jobs):
            if missing[k] == 0 and not job.future.done():
                self._answer(job, [r for req, r in zip(requests, results) if req.index == k])  # type: ignore[misc]


class ContinuingView:
    """A view of a local model whose prompts continue the final assistant message.

    The backend renders each request with ``self.render(messages)``; this view renders
    ``messages[:-1]`` with the last message's text as the answer prefix instead, and
    hands everything else to the model itself.
    """

    def __init__(self, model: BaseChatModel) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def render(self, conv: Conversation, answer_prefix: str = "") -> list[int]:
        return self._model.render(conv[:-1], answer_prefix=conv[-1]["content"] + answer_prefix)  # type: ignore[attr-defined]
