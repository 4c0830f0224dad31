"""How many CPU threads a run's tensor operations use.

torch's intra-op threads synchronise at every operation. When another process keeps one of the cores
busy, the thread that shares a core with it stalls the others at each of those points, and a small
model then trains many times slower with two threads than with one (docs/benchmarks.md, section
``threads``). So by default a run measures how busy the cores it may use are, and uses fewer threads
when other processes occupy them; ``--threads N`` fixes the count.

The automatic count is decided once per process, at its first run, and kept for its later runs (the
runs of `mlkd bench` or `mlkd demo`, a test session): results depend slightly on the thread count, so
runs that are compared with each other use the same one. A fixed ``--threads`` makes reruns in other
processes match exactly.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

# How long the CPU load of other processes is sampled before a run chooses its thread count.
SAMPLE_SECONDS = 0.25



@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a run uses, and why (printed in the run summary)."""

    threads: int
    reason: str


@dataclass
class _ProcessThreads:
    """This process's thread settings: torch's own default, the count mlkd set last, the automatic choice."""

    default: int | None = None
    set: int | None = None
    auto: ThreadChoice | None = None


_process = _ProcessThreads()


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """Cores of this process's CPU set kept busy by *other* processes, measured over ``seconds``.

    Reads Linux's ``/proc/stat`` (per-CPU busy time) before and after a sleep and subtracts this
    process's own CPU time (``/proc/self/stat``) in the same window.

    Returns:
        Busy cores as a float (``1.0`` = one core fully used by others), or ``None`` where ``/proc``
        is not available (not Linux).
    """
    cpus = _usable_cpus()
    try:
        before, self_before, t0 = _busy_ticks(cpus), _own_ticks(), time.monotonic()
        time.sleep(seconds)
        after, self_after, t1 = _busy_ticks(cpus), _own_ticks(), time.monotonic()
    except (OSError, ValueError, IndexError):
        return None
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    others = (after - before) - (self_after - self_before)
    return max(0.0, others / ticks_per_second / (t1 - t0))


def auto_threads(default: int, usable_cpus: int, busy: float | None) -> int:
    """The thread count for ``busy`` cores (of ``usable_cpus``) taken by other processes.

    Keeps ``default`` while the free cores allow it; otherwise one thread per free core (at least
    one), a half-busy core counting as free.

    Args:
        default: the thread count the run would use on an idle machine (torch's default).
        usable_cpus: cores this process may run on.
        busy: cores busy with other processes (see `busy_cores`); ``None`` = unknown, keep ``default``.
    """
    if busy is None:
        return default
    free = usable_cpus - busy
    return max(1, min(default, int(free + 0.5)))


def set_threads(requested: int | None) -> ThreadChoice:
    """Set torch's intra-op thread count for a run and return the choice.

    Args:
        requested: a fixed count (``--threads N``), or ``None`` for the automatic choice (see
            `choose_threads`), made at the process's first automatic run and reused by its later ones
            unless torch's thread count was changed in between by someone else.

    Raises:
        ValueError: ``requested`` below 1.
    """
    earlier = _process.auto
    if requested is None and earlier is not None and torch.get_num_threads() == _process.set:
        choice = ThreadChoice(earlier.threads, f"{earlier.reason}; chosen at this process's first run")
    else:
        choice = choose_threads(requested)
        if requested is None:
            _process.auto = choice
    torch.set_num_threads(choice.threads)
    _process.set = choice.threads
    return choice


def choose_threads(requested: int | None) -> ThreadChoice:
    """The thread count for a run, without setting it.

    Args:
        requested: a fixed count (``--threads N``), or ``None``: torch's default count, reduced when
            other processes keep cores busy now (see `busy_cores` and `auto_threads`).

    Raises:
        ValueError: ``requested`` below 1.
    """
    default = _default_threads()
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be >= 1 (or unset for the automatic choice), got {requested}")
        choice = ThreadChoice(int(requested), "--threads")
    else:
        cpus = len(_usable_cpus())
        busy = busy_cores()
        threads = auto_threads(default, cpus, busy)
        if busy is None:
            reason = "torch's default"
        elif threads < default:
            reason = (f"auto: {busy:.1f} of {cpus} cores busy with other processes; "
                      "fewer threads than cores avoids stalls (--threads N to fix)")
        else:
            reason = f"auto: {cpus} cores, {busy:.1f} busy with other processes"
        choice = ThreadChoice(threads, reason)
    return choice


def _default_threads() -> int:
    """torch's thread count before mlkd changed it (or as the caller set it since)."""
    current = torch.get_num_threads()
    if _process.default is None or current != _process.set:
        _process.default = current
    return _process.default


def _usable_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _busy_ticks(cpus: list[int]) -> int:
    """Busy clock ticks (everything but idle and iowait) summed over ``cpus``, from /proc/stat."""
    wanted = {f"cpu{c}" for c in cpus}
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] in wanted:
                values = [int(v) for v in fields[1:]]
                # user nice system idle iowait irq softirq steal (guest time is already in user).
                total += sum(values[:8]) - values[3] - values[4]
    return total


def _own_ticks() -> int:
    """This process's user + system clock ticks, all threads, from /proc/self/stat."""
    with open("/proc/self/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()  # the command name may contain spaces
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
