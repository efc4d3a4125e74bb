"""Where a report's figures are drawn: here, or in a second process while this one computes.

A large report spends seconds in matplotlib (holding the GIL) and seconds in numpy on its
drift series. In one process they run one after the other, and a thread gains nothing
(measured here: 9-10 s either way for the 100-model report, the GIL handed back and forth).
A :class:`Drawer` with ``in_process=False`` hands each figure to one spawned worker
process, which imports matplotlib while this process reads, and draws from plain data
(frames, arrays, paths) while this one computes: the files are the same bytes either way.
Figures cannot read the database there (DuckDB allows one process per file), so the
caller reads what a figure shows and passes it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
import types
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Any, Generic, TypeVar

T = TypeVar("T")
U = TypeVar("U")


class Drawing(Generic[T]):
    """A figure handed to a :class:`Drawer`; :meth:`result` waits for it."""

    def __init__(self, future: Future, function: Callable[..., T], args: tuple, kwargs: dict):
        self._future = future
        self._call = (function, args, kwargs)

    def result(self) -> T:
        """What the drawing function returned; its error, raised here.

        A figure the worker has not started yet is drawn here, now; one whose worker died
        (killed, out of memory) too.
        """
        if self._future.cancel():
            self._future = _run_here(*self._call)
        try:
            return self._future.result()
        except BrokenProcessPool:
            function, args, kwargs = self._call
            return function(*args, **kwargs)

    def then(self, finish: Callable[[T], U]) -> Finished[T, U]:
        """This drawing, its result passed through ``finish`` when it is asked for."""
        return Finished(self, finish)


class Finished(Generic[T, U]):
    """A :class:`Drawing` whose result goes through a function (:meth:`Drawing.then`)."""

    def __init__(self, drawing: Drawing[T], finish: Callable[[T], U]):
        self._drawing, self._finish = drawing, finish

    def result(self) -> U:
        """The drawing's result, finished."""
        return self._finish(self._drawing.result())


class Drawer:
    """Runs figure functions here (``in_process``), or in one worker process, in order.

    Use as a context manager: leaving it stops the worker once it is done. The functions
    and their arguments must be picklable (module-level functions, plain data).
    """

    def __init__(self, *, in_process: bool) -> None:
        self._pool = None
        self._drawings: list[Drawing] = []
        if not in_process:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                # spawn, not fork: a forked child inherits this process's DuckDB and Polars
                # thread pools in an unknown state.
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_prepare_worker,
            )
            try:
                with _main_module_hidden():
                    self._pool.submit(int)  # starts the worker now: its imports overlap ours
            except (OSError, BrokenProcessPool):  # no process to be had: everything drawn here
                self._pool.shutdown(wait=False)
                self._pool = None

    def submit(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> Drawing[T]:
        """Draw ``function(*args, **kwargs)``: now when in process, else in the worker."""
        future = None
        if self._pool is not None:
            with contextlib.suppress(BrokenProcessPool):  # a dead worker: draw here instead
                future = self._pool.submit(function, *args, **kwargs)
        drawing = Drawing(future or _run_here(function, args, kwargs), function, args, kwargs)
        self._drawings.append(drawing)
        return drawing

    def finish(self) -> None:
        """Wait for every figure, the latest first: those the worker has not started are
        drawn here meanwhile, so both processes draw until the last one is done."""
        for drawing in reversed(self._drawings):
            drawing.result()

    def __enter__(self) -> Drawer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            # The worker exits once its current figure is done; nothing more is drawn
            # after an error. Not waited for: the interpreter joins it at exit.
            self._pool.shutdown(wait=False, cancel_futures=True)


def _run_here(function: Callable[..., T], args: tuple, kwargs: dict) -> Future:
    future: Future = Future()
    try:
        future.set_result(function(*args, **kwargs))
    except Exception as error:  # raised by Drawing.result, as from a worker
        future.set_exception(error)
    return future


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start processes without the main module: spawn runs the parent's main script again
    in the child (to unpickle what it defines), and a script without an ``if __name__ ==
    "__main__"`` guard would run its report again there. Drawing needs only filterdb."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _prepare_worker() -> None:
    # Ctrl-C is the parent's to handle (it stops the worker): a worker of its own would
    # print a traceback for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import filterdb.reports.plots  # noqa: F401  (matplotlib's import, done once, up front)
