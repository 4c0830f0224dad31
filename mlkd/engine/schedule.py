"""The learning-rate schedule: OneCycle over Adam's lr and beta1, for a schedule of any length.

torch's OneCycleLR places a phase's position at ``(step - start) / (end - start)``. When the warm-up ends
on the first step (``warmup * total_steps == 1``: 5 steps at warm-up 0.2, 2 steps at 0.5) that length is 0
and it raises ZeroDivisionError. `build_schedule` uses torch's class wherever it can step through the
whole schedule, so those runs stay bit-identical to earlier versions of mlkd, and `OneCycle` for the rest:
the same formulas, in which a phase of zero length counts as complete (a one-step warm-up is at the peak).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR

# torch's OneCycleLR defaults, which mlkd has always used.
DIV_FACTOR = 25.0  # the first lr is max_lr / DIV_FACTOR
FINAL_DIV_FACTOR = 1e4  # the last lr is the first / FINAL_DIV_FACTOR
MAX_MOMENTUM = 0.95  # Adam's beta1 at the start and the end, cycled inversely to the lr ...
BASE_MOMENTUM = 0.85  # ... and at the peak

# The two phases (three_phase=False): the param-group keys of each one's start and end (lr, momentum).
_PHASES = (("initial_lr", "max_lr", "max_momentum", "base_momentum"),
           ("max_lr", "min_lr", "base_momentum", "max_momentum"))


def phase_ends(total_steps: int, warmup: float) -> tuple[float, int]:
    """The steps at which the warm-up and the annealing end, computed exactly as torch's OneCycleLR does.

    The warm-up's end is a float: a warm-up of 0.2 over 7 steps ends between steps 0 and 1. Below 0 (a
    warm-up shorter than one step, or none), the annealing starts before step 0.
    """
    return float(warmup * total_steps) - 1, total_steps - 1


def torch_can_build(total_steps: int, warmup: float) -> bool:
    """Whether torch's OneCycleLR steps through this schedule: none of its phases has zero length.

    With ``warmup`` in [0, 1) only the warm-up can have zero length, when ``warmup * total_steps`` is
    exactly 1.0 in floating point.
    """
    warm_end, end = phase_ends(total_steps, warmup)
    return warm_end != 0.0 and end - warm_end != 0.0


def _anneal_cos(start: float, end: float, pct: float) -> float:
    """Cosine from ``start`` (pct 0) to ``end`` (pct 1); torch's ``OneCycleLR._annealing_cos``, operation by operation."""
    cos_out = math.cos(math.pi * pct) + 1
    return end + (start - end) / 2.0 * cos_out


class OneCycle(LRScheduler):
    """torch's two-phase OneCycleLR (cosine annealing, beta1 or momentum cycled), for any phase lengths.

    Warm-up: steps 0 to ``warmup * total_steps - 1``, lr from ``max_lr / 25`` to ``max_lr``, beta1 from 0.95
    to 0.85. Annealing: from there to step ``total_steps - 1``, lr down to ``max_lr / 25 / 1e4``, beta1 back
    to 0.95. A step belongs to the first phase whose end it has not passed. Wherever torch's class works,
    every lr and beta1 equals its value bit for bit (same operations in the same order); where a phase has
    zero length, the step on it is at the phase's end instead of dividing by zero.

    Its state is numbers, strings and lists only, so ``state_dict()`` fits a weights-only checkpoint.
    """

    def __init__(self, optimizer: Optimizer, max_lr: float, total_steps: int, warmup: float) -> None:
        """Set each param group's lr and beta1 to the schedule's first values.

        Raises:
            ValueError: the optimizer has neither ``betas`` nor ``momentum`` to cycle.
        """
        if "betas" not in optimizer.defaults and "momentum" not in optimizer.defaults:
            raise ValueError(f"{type(optimizer).__name__} has no betas or momentum for the OneCycle schedule to cycle")
        self.total_steps = total_steps
        self.ends = list(phase_ends(total_steps, warmup))
        self.use_beta1 = "betas" in optimizer.defaults
        for group in optimizer.param_groups:
            group["initial_lr"] = max_lr / DIV_FACTOR
            group["max_lr"] = max_lr
            group["min_lr"] = group["initial_lr"] / FINAL_DIV_FACTOR
            group["max_momentum"], group["base_momentum"] = MAX_MOMENTUM, BASE_MOMENTUM
            self._set_momentum(group, MAX_MOMENTUM)
        super().__init__(optimizer)

    def _set_momentum(self, group: dict, momentum: float) -> None:
        if self.use_beta1:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum

    def get_lr(self) -> list[float]:
        """The lr of each param group at step ``last_epoch``; also sets the group's beta1 (or momentum).

        Raises:
            ValueError: stepped past ``total_steps`` (as torch's class).
        """
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"tried to step {step} times; the schedule has {self.total_steps} steps")
        start = 0.0
        for i, end in enumerate(self.ends):
            if step <= end or i == len(self.ends) - 1:
                break
            start = end
        lr_from, lr_to, m_from, m_to = _PHASES[i]
        # torch divides by the phase's length; a phase of length 0 is over at its only step.
        pct = (step - start) / (end - start) if end - start != 0 else 1.0
        lrs = []
        for group in self.optimizer.param_groups:
            lrs.append(_anneal_cos(group[lr_from], group[lr_to], pct))
            self._set_momentum(group, _anneal_cos(group[m_from], group[m_to], pct))
        return lrs


def build_schedule(optimizer: Optimizer, max_lr: float, total_steps: int, warmup: float) -> LRScheduler:
    """The OneCycle schedule of a run: torch's OneCycleLR where it works, `OneCycle` where it cannot.

    Args:
        optimizer: the run's optimizer (Adam: its beta1 is cycled with the lr).
        max_lr: the peak learning rate.
        total_steps: optimizer steps of the whole schedule, at least 1.
        warmup: the fraction of the steps spent warming up, in [0, 1).

    Returns:
        A scheduler to step once after each optimizer step; ``get_last_lr()`` is the next step's lr.

    Raises:
        ValueError: ``total_steps`` below 1 or ``warmup`` outside [0, 1).
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"the schedule needs a whole number of steps >= 1, got {total_steps!r}")
    warmup = float(warmup)  # torch refuses an int 0
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup is the warm-up fraction of OneCycle and must be in [0, 1), got {warmup}")
    if torch_can_build(total_steps, warmup):
        return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=warmup)
    return OneCycle(optimizer, max_lr, total_steps, warmup)
