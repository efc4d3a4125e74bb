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
import dataclasses
import multiprocessing
import sys
import types
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class Drawing(Generic[T]):
    """A figure handed to a :class:`Drawer`; :meth:`result` waits for it."""

    future: Future
    function: Callable[..., Any]
    args: tuple
    kwargs: dict
    finish: Callable[[Any], T] | None = None

    def then(self, finish: Callable[[T], U]) -> Drawing[U]:
        """This drawing, its result passed through ``finish`` (here, when it is ready)."""
        before = self.finish
        return dataclasses.replace(
            self, finish=finish if before is None else lambda value: finish(before(value))
        )

    def result(self) -> T:
        """What the drawing function returned (through :meth:`then`'s functions); its
        error, raised here.

        A worker process that died (killed, out of memory) leaves the figure undrawn: it is
        drawn here instead.
        """
        try:
            value = self.future.result()
        except BrokenProcessPool:
            value = self.function(*self.args, **self.kwargs)
        return value if self.finish is None else self.finish(value)


class Drawer:
    """Runs figure functions here (``in_process``), or in one worker process, in order.

    Use as a context manager: leaving it waits for the worker and stops it. The functions
    and their arguments must be picklable (module-level functions, plain data).
    """

    def __init__(self, *, in_process: bool) -> None:
        self._pool = None
        if not in_process:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                # spawn, not fork: a forked child inherits this process's DuckDB and Polars
                # thread pools in an unknown state.
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_import_plots,
            )
            with _main_module_hidden():
                self._pool.submit(int)  # starts the worker now: its imports overlap our reads

    def submit(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> Drawing[T]:
        """Draw ``function(*args, **kwargs)``: now when in process, else in the worker."""
        if self._pool is not None:
            with contextlib.suppress(BrokenProcessPool):  # a dead worker: draw here instead
                return Drawing(self._pool.submit(function, *args, **kwargs), function, args, kwargs)
        future: Future = Future()
        try:
            future.set_result(function(*args, **kwargs))
        except Exception as error:  # raised by Drawing.result, as from a worker
            future.set_exception(error)
        return Drawing(future, function, args, kwargs)

    def __enter__(self) -> Drawer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            # On an error nothing more is drawn; otherwise every figure is finished.
            self._pool.shutdown(wait=True, cancel_futures=error is not None)


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


def _import_plots() -> None:
    import filterdb.reports.plots  # noqa: F401  (matplotlib's import, done once, up front)
