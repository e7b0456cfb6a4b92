"""Run a pure function in a forked child and await its bytes: CPU work off the event loop.

Pickling holds the GIL for the whole call, so a thread does not help: a snapshot of a 10 MiB
model sealed on the loop stops it for over a second. A forked child gets a copy-on-write image of
the process at the moment of the fork (as Redis' ``BGSAVE`` does), computes there, writes the
result to a pipe and ``os._exit``\\ s; the parent reads the pipe from its event loop and goes on
working meanwhile.

While the child lives, the parent's garbage collector skips the objects that existed
at the fork (``gc.freeze``), which would otherwise copy the whole heap at its next full pass.

Fork hazards, and why this is safe: the child runs only the given function (pickle, HMAC), then
``os.write`` and ``os._exit``. It touches no event loop, socket, lock or logging handler, runs no
``atexit`` hook and no finalizer (the garbage collector is off in it), and takes back the signal
dispositions the parent's event loop installed (a SIGTERM to the child must kill it, not wake the
parent's loop through the inherited wakeup fd). CPython takes the import lock around ``fork``, so
no other thread can hold it in the child; a thread's other locks are not on that path.

Wire format of the pipe: one status byte (``0`` the function's bytes follow, ``1`` a failure's
text follows), then the bytes. A child that dies before writing everything (killed, out of
memory) is seen by its exit status and raises :class:`ForkedCallFailed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import traceback
from collections.abc import Callable

_OK, _FAILED = b"\x00", b"\x01"
#: The bytes read from the pipe per wakeup of the loop (the pipe itself buffers 64 KiB).
_CHUNK = 1 << 20
#: Signals whose handlers the child puts back to the default (the loop may have set them).
_RESET = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD)


class ForkedCallFailed(Exception):
    """Raised when the child raised, was killed, or exited without writing its whole result."""


def can_fork() -> bool:
    """Whether this platform has ``os.fork`` (Linux and macOS do; driftline runs on Linux)."""
    return hasattr(os, "fork")


class ForkedCall:
    """``compute()`` run in a child forked now; :meth:`result` awaits its bytes.

    The fork captures the process as it is at the call: what the parent changes afterwards is
    not seen by the child. Await :meth:`result` (or call :meth:`cancel`) exactly once, so the
    child is reaped.

    Examples
    --------
    >>> import asyncio
    >>> async def run():
    ...     state = {"n": 1}
    ...     call = ForkedCall(lambda: str(state["n"]).encode())
    ...     state["n"] = 2  # after the fork: the child does not see it
    ...     return await call.result()
    >>> asyncio.run(run())
    b'1'
    """

    def __init__(self, compute: Callable[[], bytes]) -> None:
        read_end, write_end = os.pipe()
        # While the child lives, the parent's collector leaves the objects it shares with the
        # child alone: a full collection writes to every object, which would copy every page of
        # the heap (the child's image) at once. Unfrozen when the child is done.
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_end)
            _child(compute, write_end)
        os.close(write_end)
        self.pid = pid
        self._fd = read_end
        self._reaped = False

    async def result(self) -> bytes:
        """The child's bytes, once it exited cleanly; :class:`ForkedCallFailed` otherwise."""
        try:
            data = await self._read_all()
            status = await self._wait()
        except BaseException:  # cancelled (the worker stops): the child must not outlive it
            self.cancel()
            raise
        finally:
            gc.unfreeze()
        if data[:1] == _OK and status == 0:
            return data[1:]
        if data[:1] == _FAILED:
            raise ForkedCallFailed(data[1:].decode(errors="replace"))
        raise ForkedCallFailed(f"the child (pid {self.pid}) ended without its result: {_explain(status)}")

    def cancel(self) -> None:
        """Kill the child, if it still runs, and reap it (a cancelled or failed wait)."""
        gc.unfreeze()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if not self._reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self._reaped = True

    async def _read_all(self) -> bytes:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()
        chunks: list[bytes] = []
        os.set_blocking(self._fd, False)

        def readable() -> None:
            try:
                chunk = os.read(self._fd, _CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:
                loop.remove_reader(self._fd)
                done.set_exception(exc)
                return
            if chunk:
                chunks.append(chunk)
                return
            loop.remove_reader(self._fd)  # end of file: the child closed its end (exited)
            done.set_result(b"".join(chunks))

        loop.add_reader(self._fd, readable)
        try:
            return await done
        finally:
            loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)

    async def _wait(self) -> int:
        """The child's wait status, polled: the pipe's end of file means it is exiting now."""
        delay = 0.001
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._reaped = True
                return status
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)


def _child(compute: Callable[[], bytes], fd: int) -> None:
    """The child's whole life: compute, write, exit. Nothing else of the parent is touched."""
    code = 1
    try:
        gc.disable()  # no finalizer of the parent's objects may run here (a socket's, say)
        signal.set_wakeup_fd(-1)
        for signum in _RESET:
            signal.signal(signum, signal.SIG_DFL)
        try:
            out, code = _OK + compute(), 0
        except BaseException as exc:  # reported to the parent, which decides
            out = _FAILED + "".join(traceback.format_exception_only(exc)).strip().encode()
        view = memoryview(out)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:  # the parent is gone (EPIPE) or the pipe broke: it sees the status
        code = 1
    finally:
        os._exit(code)


def _explain(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
