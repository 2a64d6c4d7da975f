"""Worker processes that train the protocol's classifiers side by side.

A small classifier on 64-px tiles cannot fill many cores, so ``progaug evaluate --workers W`` trains W of them
at once, each in its own process with ``max(1, threads // W)`` threads (on a 2-core CPU, where one training
already uses both cores, the gain is 1.1x: docs/benchmarks.md). The workers are started with ``spawn`` (no fork of a process whose OpenMP
and CUDA state is already initialised; see ../shared/PITFALLS.md on forked workers), receive the run's data
once, and return each training's result with the progress lines it wrote. A training's result depends on its
key only (seeded data order, initialisation and draws), so the same trainings give the same figures with any
number of workers at the same threads per training. A worker ends with the process that started it, killed
included (a pool's workers otherwise finish the training they hold, minutes of CPU for a run nobody reads).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

import torch

__all__ = ["exit_with_parent", "start_pool", "threads_per_worker"]

_RUNNER: Any = None
_MESSAGES: list[str] = []
_TEACHERS: list[tuple[tuple, str]] = []


def threads_per_worker(workers: int, threads: int | None = None) -> int:
    """Threads each of ``workers`` processes takes: ``max(1, threads // workers)`` (``threads``: this process's)."""
    return max(1, (torch.get_num_threads() if threads is None else threads) // workers)


def start_pool(workers: int, runner_args: tuple, threads: int) -> Executor:
    """``workers`` spawned processes, each holding a runner built from ``runner_args`` (the arguments of
    :class:`progaug.evaluation.protocol._Runner` without ``on_run`` and ``memo``) and ``threads`` torch threads."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init,
                               initargs=(runner_args, threads))


def exit_with_parent() -> None:
    """End this process as soon as the process that started it (:func:`multiprocessing.parent_process`) ends,
    however it ended: a daemon thread waits on the parent's sentinel, then exits without cleanup (the
    training it interrupts is lost, as its parent's run is). Does nothing in a process multiprocessing did
    not start."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="progaug-exit-with-parent", daemon=True).start()


def _init(runner_args: tuple, threads: int) -> None:
    global _RUNNER
    exit_with_parent()
    from progaug.evaluation.protocol import _Runner

    torch.set_num_threads(threads)
    _RUNNER = _Runner(*runner_args, on_run=_MESSAGES.append, memo={})
    _RUNNER.on_teacher = lambda key, message: _TEACHERS.append((key, message))


def fit_in_worker(request: tuple) -> tuple[dict, list[tuple[tuple, str]], list[str]]:
    """Train one classifier in a worker: ``request`` is :meth:`_Runner.fit`'s arguments; returns its result, the
    teachers it trained (key and progress line: the parent reports each key once, as one process would) and
    the training's progress lines."""
    _MESSAGES.clear()
    _TEACHERS.clear()
    out = _RUNNER.fit(*request)
    return out, list(_TEACHERS), list(_MESSAGES)
