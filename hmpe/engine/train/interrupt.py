"""Ctrl-C during training: stop between two training steps, leave a resumable ``last.pt``, end with one line.

The first SIGINT only sets a flag (:class:`StopFlag`); the loop looks at it after every step, so the state it
saves (weights, EMA, optimiser, scaler, counters, RNG) is the one between two steps, the state an
uninterrupted run passes through. A second Ctrl-C interrupts at once (the previous handler is back). The
flag is set only in the main thread of a single process: under torchrun every rank would have to agree on
where to stop, so Ctrl-C there stops at once and ``resume=`` continues from the last completed epoch.

Stopped mid-epoch, ``last.pt`` also holds ``epoch_progress`` (the epoch, the batches done, the loss sums);
the resumed run reseeds that epoch as always (``seed + epoch``: the same data order), reads the batches
done again without training on them (:func:`skip_done_batches`) and restores the RNG state saved at the
stop, so it trains on what the uninterrupted run would have (``tests/test_interrupt.py``: the same weights
on the CPU). A KeyboardInterrupt raised inside a step (the second Ctrl-C) saves the state as it is:
resumable, but that step may be half applied.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Iterator

from hmpe.engine.checkpoint import save_atomic, set_rng_state
from hmpe.utils import dist as du

__all__ = ["StopFlag", "TrainingInterrupted", "save_interrupted", "skip_done_batches", "worker_ignores_sigint"]

NOTICE = (b"\nCtrl-C: stopping after the training step in progress and saving a resumable last.pt "
          b"(press Ctrl-C again to stop at once)\n")


def worker_ignores_sigint(worker_id: int) -> None:
    """``worker_init_fn`` of the training and validation loaders: Ctrl-C reaches every process of the
    terminal's process group, and a loader worker ends on it; the main process decides when to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :meth:`hmpe.engine.train.trainer.Trainer.fit` after Ctrl-C, once ``checkpoint`` (the run's
    ``last.pt``) holds the state to resume from; ``str()`` is the line the command line prints: where the run
    stopped and the command that resumes it. A ``KeyboardInterrupt``, so code that catches that still does."""

    def __init__(self, message: str, checkpoint):
        super().__init__(message)
        self.checkpoint = checkpoint


class StopFlag:
    """A context manager: inside it, the first SIGINT sets ``requested`` instead of raising KeyboardInterrupt
    (main thread of a single process only; elsewhere, and where SIGINT is ignored, nothing changes)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopFlag:
        self.requested = False
        if threading.current_thread() is threading.main_thread() and not du.is_dist():
            previous = signal.getsignal(signal.SIGINT)
            if previous not in (None, signal.SIG_IGN):  # None: a handler not set from Python, left alone
                self._previous = previous
                signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # the second Ctrl-C interrupts at once
        try:  # os.write, not print: a print may be under way in the code this handler interrupted
            os.write(2, NOTICE)
        except OSError:
            pass

    def __exit__(self, *exc) -> bool:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        return False


def skip_done_batches(trainer, epoch: int, batches: Iterator, scale_rng: random.Random) -> dict:
    """The progress of ``epoch`` so far (batches done, loss sums, boxes dropped): none, or for a run resumed
    from a ``last.pt`` saved mid-epoch, its progress once the batches it had done are read again from
    ``batches`` (not trained on), so that the data order, the loader workers' augmentation streams and the
    multi-scale sizes (``scale_rng``) go on where it stopped; then the RNG state it stopped with is restored.
    The same batches, augmentations and noise as an uninterrupted run."""
    done, trainer.resumed_progress = trainer.resumed_progress, None
    if done is None or done["epoch"] != epoch:
        return {"batches": 0, "sums": {}, "n": 0, "dropped": 0}
    for _ in range(done["batches"]):
        next(batches)
        if trainer.multi_scale:
            scale_rng.choice(trainer.multi_scale)
    set_rng_state(trainer.resume_ckpt["rng"])
    return done


def save_interrupted(trainer) -> TrainingInterrupted:
    """After Ctrl-C: make the run's ``last.pt`` hold where it stopped (mid-epoch: with the epoch's progress,
    ``epoch_progress``, so that ``resume=`` continues inside it) and return the exception that says so."""
    last, per_epoch = trainer.weights_dir / "last.pt", len(trainer.train_loader)
    p = trainer.epoch_progress
    epoch, done = (p["epoch"], p["batches"]) if p else divmod(trainer.iteration, per_epoch)
    if du.is_dist():  # the ranks cannot agree on a step to stop at: the last completed epoch stays
        return TrainingInterrupted(f"interrupted in epoch {epoch + 1}; resume with: hmpe train resume={last} "
                                   f"(under torchrun: from the last completed epoch)", last)
    if p is not None or not last.is_file():  # else last.pt already holds the last completed epoch
        save_atomic(trainer.checkpoint(epoch - 1, trainer.metrics) | ({"epoch_progress": p} if p else {}), last)
    if epoch >= trainer.epochs:
        return TrainingInterrupted(f"interrupted after the last epoch; the trained weights are in {last}", last)
    return TrainingInterrupted(f"interrupted at epoch {epoch + 1}, iteration {done}/{per_epoch}; "
                               f"resume with: hmpe train resume={last}", last)
