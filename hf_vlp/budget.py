"""Training within a wall-clock budget, on a machine that other processes share (the demo's `--minutes`).

A plan made before training from a few timed steps fails two ways: the first steps carry start-up cost (thread
pools, allocator, data loader), and another process that takes a core halfway through makes every later step slower
than planned. So nothing here extrapolates from a probe. `DeadlineCallback` measures the steady-state step time while
training (the running median of the intervals between the last `window` optimizer-step ends, after `skip` warm-up
steps), and at every step

* stops training when the next step would end past the deadline, and
* re-plans the learning-rate schedule: the decay (linear or cosine, after the usual warm-up) is stretched or
  shortened to end at the step where the deadline now falls, so a run cut short still ends at a low learning rate.

`Budget` splits one run's budget into phase deadlines, each a share of what is left when the phase starts (after a
reserve for what follows training), so time lost early (feature extraction on a busy machine) is taken from the
phases that follow rather than added to the total.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback


def process_start(clock=time.perf_counter):
    """The `clock()` value at which this process started (Linux: from /proc), so that a command's budget also covers
    the interpreter's start and its imports; now where /proc cannot tell."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        age = 0.0
    return clock() - max(0.0, age)


class Budget:
    """`seconds` of wall-clock time from `started` (a `clock()` value; default now, `process_start()` for a whole
    command), of which `reserve` (seconds, or a fraction of the budget below 1) is kept for the work after the last
    phase (evaluation, saving)."""

    def __init__(self, seconds, reserve=0.1, started=None, clock=time.perf_counter):
        if not seconds > 0:
            raise ValueError(f"`seconds` must be positive, got {seconds!r}")
        if not 0 <= reserve:
            raise ValueError(f"`reserve` must be >= 0 (seconds, or a fraction of the budget below 1), got {reserve!r}")
        self.clock = clock
        self.started = clock() if started is None else started
        self.seconds = seconds
        self.reserve = reserve * seconds if reserve < 1 else reserve

    def elapsed(self):
        return self.clock() - self.started

    def remaining(self):
        return self.seconds - self.elapsed()

    def deadline(self, share=1.0):
        """The clock time by which a phase that gets `share` of the time left (after the reserve) must end."""
        if not 0 < share <= 1:
            raise ValueError(f"`share` must be in (0, 1], got {share!r}")
        return self.clock() + max(0.0, self.remaining() - self.reserve) * share


class DeadlineCallback(TrainerCallback):
    """Stops training before `deadline` (a `clock()` value) and plans the learning-rate decay to end there (module
    docstring). `min_steps` are always taken, so a phase whose time is gone still produces a model.

    estimate(): seconds per step, the median of the last `window` step intervals after the first `skip` ones (those
    include start-up); the slowest interval seen so far until steady-state intervals exist.
    planned_steps: the step at which the deadline falls, as of the last step.
    """

    def __init__(self, deadline, min_steps=1, skip=2, window=20, clock=time.perf_counter):
        if min_steps < 0 or skip < 0 or window < 1:
            raise ValueError(f"need min_steps >= 0, skip >= 0, window >= 1; got {min_steps}, {skip}, {window}")
        self.deadline, self.min_steps, self.skip, self.window, self.clock = deadline, min_steps, skip, window, clock
        self.intervals = []
        self.planned_steps = None
        self._last = None
        self._progress = None
        self._args = None

    def estimate(self):
        steady = self.intervals[self.skip :]
        if steady:
            return statistics.median(steady[-self.window :])
        return max(self.intervals) if self.intervals else None

    def _plan(self, step):
        estimate = self.estimate()
        if estimate is None:
            return
        self.planned_steps = max(step + 1, step + int(max(0.0, self.deadline - self.clock()) / estimate))

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self._last = self.clock()
        self._args = args
        if lr_scheduler is not None:
            self._take_over_schedule(args, lr_scheduler)

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        self.intervals.append(now - self._last)
        self._last = now
        self._plan(state.global_step)
        # the stop decision also trusts the latest step: a slowdown (another process took a core) counts at once
        if state.global_step >= self.min_steps and now + max(self.estimate(), self.intervals[-1]) > self.deadline:
            control.should_training_stop = True
            self.planned_steps = state.global_step
        if self._progress is not None and getattr(self._progress, "training_bar", None) is not None:
            self._progress.training_bar.total = max(self.planned_steps, state.global_step)
            self._progress.training_bar.refresh()

    def follow_progress_bar(self, trainer):
        """Let the Trainer's progress bar show the planned number of steps rather than the step cap."""
        self._progress = next((c for c in trainer.callback_handler.callbacks if isinstance(c, ProgressCallback)), None)

    # the learning-rate schedule, re-planned to the deadline

    def _factor(self, step):
        args = self._args
        planned = self.planned_steps or args.max_steps
        warmup = args.get_warmup_steps(planned)
        if step < warmup:
            return step / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, planned - warmup))
        kind = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
        if kind == "linear":
            return 1.0 - progress
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0  # constant, constant_with_warmup

    def _take_over_schedule(self, args, lr_scheduler):
        kind = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
        if kind not in ("linear", "cosine", "constant", "constant_with_warmup"):
            raise ValueError(
                f"DeadlineCallback re-plans linear, cosine and constant schedules; `lr_scheduler_type` is {kind!r}"
            )
        if not hasattr(lr_scheduler, "lr_lambdas"):  # a scheduler object of the user's own: left alone
            return
        lr_scheduler.lr_lambdas = [self._factor] * len(lr_scheduler.lr_lambdas)


def train_within(make_trainer, deadline, max_steps=100_000, min_steps=1, clock=time.perf_counter):
    """Train `make_trainer(max_steps, callbacks)` until `deadline` (a `clock()` value, e.g. `Budget.deadline()`),
    with the learning-rate decay planned to end there; `max_steps` only caps a machine much faster than any
    estimate. Returns the Trainer's `TrainOutput` (`global_step`: the steps taken)."""
    callback = DeadlineCallback(deadline, min_steps=min_steps, clock=clock)
    trainer = make_trainer(max_steps, [callback])
    callback.follow_progress_bar(trainer)
    return trainer.train()
