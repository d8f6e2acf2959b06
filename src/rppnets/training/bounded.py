"""Every wait a run makes on another thread or process has a bound, and a run that fails says why in a few words.

Python's ``Thread.start()`` waits without end for the new thread to say it started: a thread whose first steps run out
of memory (an address-space limit lowered mid-run) never says so, and the run hung there with only ``Exception ignored
in thread started by ... MemoryError`` printed. W&B's client waits without end on its service process (wandb-core).
Here a thread that cannot start is an error naming the thread and the cause, a call into another thread or process
gets a time limit, and `failure_text` finds the cause under the errors a failing run's clean-up adds on top of it.
"""

from __future__ import annotations

import contextlib
import mmap
import sys
import threading
import time

# How long a new thread may take to say it started (microseconds normally, on a loaded machine a few milliseconds).
THREAD_START_S = 5.0
_POLL_S = 0.05  # how often a waiting start() looks for a failure reported by the thread itself
# How long a wait may go on once the run is being stopped (a stop signal came): a user stopping a run, or SLURM
# before its kill, wants it to end soon.
STOPPING_S = 5.0
# Address space held back from the start of a run and given back when it fails: recording why it failed needs memory.
RESERVE_BYTES = 32 << 20


class ThreadStartError(RuntimeError):
    """A thread could not start: the system refused it, or it failed (out of memory) before it said it started."""


class WaitTimeout(TimeoutError):
    """Another thread or process did not answer within its time limit."""


class _StartedOrFailed(threading.Event):
    """The event a starting thread sets when it runs, and that ``Thread.start()`` waits on: waited on with a bound,
    and woken by `failure` when the thread reported that it could not start."""

    failure: BaseException | None = None
    thread_name = "?"

    def wait(self, timeout=None):
        if timeout is not None:
            return super().wait(timeout)
        deadline = time.monotonic() + THREAD_START_S
        while not super().wait(_POLL_S):
            if self.failure is not None:
                raise ThreadStartError(f"thread {self.thread_name!r} could not start "
                                       f"({type(self.failure).__name__})") from self.failure
            if time.monotonic() >= deadline:
                try:  # the thread's own report needs memory too: whether there is any says why it is silent
                    bytearray(1 << 20)
                except MemoryError as err:
                    raise ThreadStartError(f"thread {self.thread_name!r} could not start (MemoryError)") from err
                raise ThreadStartError(f"thread {self.thread_name!r} did not start within {THREAD_START_S:g} s")
        return True


def _never_started(thread: threading.Thread) -> None:
    """Leave a thread that failed to start as one that has ended: joining it returns at once (a clean-up that joins
    it must not replace the cause with "cannot join thread before it is started")."""
    with threading._active_limbo_lock:
        threading._limbo.pop(thread, None)
    thread._is_stopped = True
    threading.Event.set(thread._started)


@contextlib.contextmanager
def bounded_thread_starts():
    """While open, ``Thread.start()`` raises ThreadStartError within THREAD_START_S instead of waiting without end,
    and at once when the new thread reports (through ``sys.unraisablehook``) the error that stopped it."""
    original_start, original_hook = threading.Thread.start, sys.unraisablehook

    def start(thread):
        if type(thread._started) is threading.Event:
            thread._started.__class__ = _StartedOrFailed
            thread._started.thread_name = thread.name
        try:
            original_start(thread)
        except ThreadStartError:
            _never_started(thread)
            raise
        except RuntimeError as err:  # the system refused the thread (no memory for its stack, too many threads)
            raise ThreadStartError(f"thread {thread.name!r} could not start ({err})") from err

    def hook(unraisable):
        thread = getattr(unraisable.object, "__self__", None)
        started = getattr(thread, "_started", None)
        if isinstance(thread, threading.Thread) and isinstance(started, _StartedOrFailed) and not started.is_set():
            started.failure = unraisable.exc_value or unraisable.exc_type()  # start() raises it; nothing to print
            return
        original_hook(unraisable)

    threading.Thread.start, sys.unraisablehook = start, hook
    try:
        yield
    finally:
        threading.Thread.start, sys.unraisablehook = original_start, original_hook


def call_within(seconds: float, what: str, fn, *args, stopping=None, **kwargs):
    """``fn(*args, **kwargs)`` in a thread of its own, waited on for at most `seconds`: WaitTimeout naming `what`
    if it has not returned by then (the thread is left to end whenever it does), else its value or its error.

    `stopping`, a function saying whether the run is being stopped, cuts the wait to at most STOPPING_S from the
    moment it first says so (from the start if it does then), whichever ends first.
    """
    done, outcome = threading.Event(), {}

    def work():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 (handed to the caller)
            outcome["error"] = err
        finally:
            done.set()

    threading.Thread(target=work, name=what, daemon=True).start()
    deadline, bound = time.monotonic() + seconds, f"{seconds:g} s"
    while not done.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(f"{what} did not answer within {bound}")
        if stopping is not None and stopping():
            stopping = None  # looked at until it first says so
            if STOPPING_S < left:
                deadline, bound = time.monotonic() + STOPPING_S, f"{STOPPING_S:g} s of the stop signal"
            continue
        done.wait(left if stopping is None else min(left, _POLL_S))
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class MemoryReserve:
    """Address space held (mapped, never touched: no memory used) from the start of a run, given back when the run
    ends: a run that ran out of it can still record why."""

    def __init__(self, size: int = RESERVE_BYTES):
        try:
            self._map: mmap.mmap | None = mmap.mmap(-1, size)
        except (OSError, ValueError):  # no room for it to begin with: the run fails soon, as it would have
            self._map = None

    def release(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def out_of_memory(err: BaseException) -> bool:
    """Whether `err` is the allocator refusing memory: Python's MemoryError, or torch's (RuntimeError "can't allocate
    memory" on the CPU, OutOfMemoryError on a GPU)."""
    if isinstance(err, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(err, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def _chain(err: BaseException):
    """`err` and the errors it was raised from or while handling, outermost first (each once)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def root_cause(err: BaseException) -> BaseException:
    """The error that ended a run: the first out-of-memory, thread-start or time-limit error in `err`'s chain (a
    clean-up that fails after one adds its own error on top), else `err`."""
    for link in _chain(err):
        if out_of_memory(link) or isinstance(link, (ThreadStartError, WaitTimeout)):
            return link
    return err


def failure_text(err: BaseException, phase: str) -> str:
    """One line saying why a run failed in `phase` (``starting``, ``training``, ``testing``, ...): "out of memory in
    testing (...)" when the allocator refused memory anywhere in the chain, else the error's type and first line."""
    cause = root_cause(err)
    detail = f"{type(cause).__name__}: {cause}".splitlines()[0] if str(cause) else type(cause).__name__
    if any(out_of_memory(link) for link in _chain(cause)):
        return f"out of memory in {phase} ({detail})"
    if isinstance(cause, (ThreadStartError, WaitTimeout)):
        return f"{detail} (in {phase})"
    return detail
