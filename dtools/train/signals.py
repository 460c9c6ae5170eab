"""Ctrl-C and SIGTERM during training: answered at once, even in the middle of a long step.

Python runs a signal handler only when the main thread returns to Python code, and a training step
spends its time inside torch (a 64x64 step of batch 128 takes 50 s on a 2-core CPU): a handler alone
would stay silent until the step ends, and users press Ctrl-C again. So the C-level handler's wakeup
byte (`signal.set_wakeup_fd`) is read by a watcher thread, which answers while the step runs:

- the first SIGINT or SIGTERM sets `requested` (the loop stops after the step, with a checkpoint) and
  calls `on_request` at once (the Trainer says what will happen and how to abort);
- a second SIGINT calls `on_abort` at once, which ends the process (exit 130) without waiting for the
  step; it waits only while `writing` is held, so a checkpoint being written is never cut in half.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from dtools.progress import duration

ABORT_EXIT = 130  # 128 + SIGINT, what a shell reports for a process stopped by Ctrl-C


def abort(message: str) -> None:
    """End the process now with exit 130 after one line on stderr (and the cursor a live progress bar
    hid shown again); no cleanup runs, so callers hold off while a file is half written."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    text = message + "\n"
    with contextlib.suppress(OSError):
        if os.isatty(2):
            text = "\r\x1b[2K\x1b[?25h" + text  # clear the bar's line, show the cursor
        os.write(2, text.encode(errors="replace"))
    os._exit(ABORT_EXIT)


def stop_message(signal_name: str, step: int, seconds_per_step: float | None, checkpoint_step: int) -> str:
    """What the first Ctrl-C (or SIGTERM) says at once, while step `step` runs."""
    pace = f" (a step takes about {duration(seconds_per_step)})" if seconds_per_step else ""
    kept = (f"the checkpoint of step {checkpoint_step} stays" if checkpoint_step >= 0
            else "nothing has been saved yet")
    again = f"; Ctrl-C again aborts at once ({kept})" if signal_name == "SIGINT" else ""
    name = "Ctrl-C" if signal_name == "SIGINT" else signal_name
    return f"{name}: stopping after step {step} and saving a checkpoint{pace}{again}"


def abort_message(step: int, checkpoint_step: int, run: Any) -> str:
    """What the second Ctrl-C says as it ends the process during step `step`."""
    if checkpoint_step >= 0:
        return (f"aborted during step {step}: the checkpoint of step {checkpoint_step} in {run} is intact; "
                f"continue with: dtools train --resume -o {run}")
    return (f"aborted during step {step}, before the first checkpoint: nothing was saved; the same command "
            "starts the run over")


class StopSignals:
    """SIGINT/SIGTERM set `requested`, so the loop stops at the next step boundary with a checkpoint;
    `on_request(name)` is told at once ("SIGINT" or "SIGTERM"). A second SIGINT calls `on_abort()`
    at once (after any write under `writing`; without `on_abort`, `abort("aborted")`). Installed only
    from the main thread (elsewhere it does nothing)."""

    def __init__(
        self, on_request: Callable[[str], None] | None = None, on_abort: Callable[[], Any] | None = None,
        writing: threading.Lock | None = None,
    ) -> None:
        self.requested = False
        self.on_request, self.on_abort = on_request, on_abort
        self.writing = writing or threading.Lock()
        self._old: dict[int, Any] = {}
        self._seen = 0  # signals the watcher has answered
        self._old_fd: int | None = None
        self._pipe: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        r, w = os.pipe()
        os.set_blocking(w, False)  # set_wakeup_fd needs it; the watcher's end blocks
        self._pipe = (r, w)
        self._old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, args=(r,), name="dtools-signals", daemon=True)
        self._thread.start()
        return self

    def _handle(self, signum, frame) -> None:
        # Runs in the main thread once it is back in Python; the watcher has answered already.
        self.requested = True

    def _watch(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:
                return  # __exit__ closed the pipe
            for signum in data:
                if signum in (signal.SIGINT, signal.SIGTERM):
                    self._answer(signum)

    def _answer(self, signum: int) -> None:
        self._seen += 1
        if self._seen == 1:
            self.requested = True
            if self.on_request is not None:
                self.on_request(signal.Signals(signum).name)
        elif signum == signal.SIGINT:
            with self.writing:  # a checkpoint being written finishes first
                if self.on_abort is not None:
                    self.on_abort()
                else:
                    abort("aborted")

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """Hold off an abort while files are written."""
        with self.writing:
            yield

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_fd if self._old_fd is not None else -1)
            r, w = self._pipe
            os.close(w)  # the watcher reads EOF and ends
            if self._thread is not None:
                self._thread.join(timeout=5)
            os.close(r)
        self._old, self._pipe, self._thread = {}, None, None
