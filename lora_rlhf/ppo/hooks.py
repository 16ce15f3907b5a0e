"""Phase hooks: watch the parts of a PPO iteration (time, memory, a profiler) without changing them.

One iteration runs, in this order (issue 26, item 6):

    generate          sample the responses from `policy` (rollout.sample)
    score             old log-probs, reference log-probs, values and scores (rollout.score or the reward_fn)
    advantages        eq. 2's rewards, GAE / RLOO / GRPO, whitening (optimize.add_advantages)
    for each minibatch of each PPO epoch:
        for each micro-batch:
            policy_backward   the clipped surrogate (+ KL term, + PPO-ptx term) and its backward
            value_backward    the clipped value loss and its backward (not when critic-free)
        optimizer_step    all-reduce, clip and step every trained role's optimizer

A hook subclasses `PhaseHook` and overrides the methods it needs, as transformers' `TrainerCallback` does.
Each phase calls `on_phase_begin` before its work and `on_phase_end` after it (not when it raised). With no
hook the phases cost one truth test each: `phase` hands back a shared do-nothing context manager.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Literal, get_args

Phase = Literal["generate", "score", "advantages", "policy_backward", "value_backward", "optimizer_step"]
PHASES: tuple[Phase, ...] = get_args(Phase)


@dataclasses.dataclass(frozen=True)
class PhaseEvent:
    """Which phase starts or ends, and where in the iteration."""

    phase: Phase
    micro: int | None = None  # policy_backward / value_backward: the micro-batch's index in its minibatch


class PhaseHook:
    """Base class of the hooks: both methods do nothing here; override the ones you need."""

    def on_phase_begin(self, event: PhaseEvent) -> None:
        """Called just before `event.phase` runs."""

    def on_phase_end(self, event: PhaseEvent) -> None:
        """Called just after `event.phase` finished (on the CPU side: a CUDA hook synchronizes if it times)."""


Hooks = Sequence[PhaseHook]
_UNWATCHED = contextlib.nullcontext()


def phase(hooks: Hooks, name: Phase, *, micro: int | None = None) -> contextlib.AbstractContextManager[None]:
    """The block of phase `name`, announced to every hook in `hooks` (in their order)."""
    if not hooks:
        return _UNWATCHED
    return _watched(hooks, PhaseEvent(name, micro))


@contextlib.contextmanager
def _watched(hooks: Hooks, event: PhaseEvent) -> Iterator[None]:
    for hook in hooks:
        hook.on_phase_begin(event)
    yield
    for hook in hooks:
        hook.on_phase_end(event)
