"""Sizing lhotse's DynamicBucketingSampler to the data, and the check that an epoch really trained.

With `drop_last=True` (icefall's setting) every duration bucket throws away its last, partial
batch. icefall's 30 buckets are sized for LibriSpeech: on a small corpus each bucket holds less
than one batch and the epoch yields nothing at all. `plan_bucketing` reads the (filtered) cuts
once, stopping as soon as there is enough audio for every bucket to fill several batches, and caps
the number of buckets (and the shuffling buffers) to what the data can fill. `check_epoch` turns an
epoch that produced no batch, or far fewer than the audio implies, into an error that says what to
change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# Each bucket should hold at least this many batches of audio: with drop_last each bucket loses at
# most one partial batch per epoch, i.e. at most 1/4 of the data (about 1/8 on average).
BATCHES_PER_BUCKET = 4
# icefall's asr_datamodule: buffer_size = num_buckets * 5000 cuts.
CUTS_PER_BUCKET_BUFFER = 5000
# An epoch with fewer than this fraction of the batches its audio implies is an error.
MIN_BATCH_FRACTION = 0.5


class BatchingError(ValueError):
    """The training data and the batching options cannot produce the batches an epoch needs."""


@dataclass
class BucketPlan:
    num_buckets: int          # buckets the sampler uses (<= the requested number)
    requested_buckets: int
    buffer_size: int          # cuts held by the bucketing buffer
    shuffle_buffer_size: int  # cuts held by the shuffling buffer
    bins_estimate_cuts: int   # cuts read to estimate the bucket boundaries
    num_cuts: int             # cuts read by the scan
    seconds: float            # their total duration
    complete: bool            # True when the scan read every cut (small data)
    batch_seconds: float      # max_duration * world_size: audio consumed per optimizer step

    @property
    def capped(self) -> bool:
        return self.num_buckets < self.requested_buckets

    @property
    def expected_batches(self) -> Optional[float]:
        """Batches per rank per epoch that the audio implies (None when the scan stopped early)."""
        return self.seconds / self.batch_seconds if self.complete else None

    def describe(self) -> str:
        size = f"{self.num_cuts} cuts, {self.seconds:.0f} s" if self.complete else \
            f"more than {self.num_cuts} cuts / {self.seconds:.0f} s"
        return (f"training data: {size}; max_duration x world_size = {self.batch_seconds:g} s per step; "
                f"{self.num_buckets} duration buckets" +
                (f" (capped from {self.requested_buckets} so that each can fill a batch)"
                 if self.capped else ""))


def plan_bucketing(cuts, max_duration: float, num_buckets: int, world_size: int = 1,
                   drop_last: bool = True) -> BucketPlan:
    """Read `cuts` (lazily, once) just far enough to size the sampler; raise BatchingError when the
    data cannot fill a single batch."""
    if num_buckets < 1:
        raise BatchingError(f"num_buckets must be >= 1, got {num_buckets}")
    batch_seconds = max_duration * world_size
    enough = num_buckets * BATCHES_PER_BUCKET * batch_seconds
    n, seconds, complete = 0, 0.0, True
    for cut in cuts:
        n += 1
        seconds += cut.duration
        if seconds >= enough:
            complete = False
            break
    if n == 0:
        raise BatchingError("no training cuts: the manifest is empty or every cut was removed by the "
                         "filters (--min-duration, --max-utt-duration, and frames >= tokens)")
    buckets = num_buckets
    if complete:
        buckets = max(1, min(num_buckets, n, int(seconds // (BATCHES_PER_BUCKET * batch_seconds))))
        if drop_last and seconds < batch_seconds:
            raise BatchingError(
                f"the training data ({n} cuts, {seconds:.1f} s after the duration filters) cannot fill "
                f"one batch of --max-duration {max_duration:g} s x {world_size} process(es): lower "
                f"--max-duration (below {seconds / world_size:.0f}) or add data")
    buffer_size = num_buckets * CUTS_PER_BUCKET_BUFFER
    plan = BucketPlan(
        num_buckets=buckets, requested_buckets=num_buckets,
        buffer_size=min(buffer_size, n) if complete else buffer_size,
        shuffle_buffer_size=min(20000, n) if complete else 20000,
        bins_estimate_cuts=min(10000, n) if complete else 10000,
        num_cuts=n, seconds=seconds, complete=complete, batch_seconds=batch_seconds)
    return plan


def check_epoch(num_batches: int, plan: Optional[BucketPlan], epoch: int) -> None:
    """Raise BatchingError when an epoch yielded no batch, or far fewer than its audio implies."""
    advice = ("lower --max-duration, lower --num-buckets, or relax the duration filters "
              "(--min-duration / --max-utt-duration)")
    if num_batches == 0:
        what = f" ({plan.describe()})" if plan is not None else ""
        raise BatchingError(f"epoch {epoch} produced no training batch{what}; nothing was trained. "
                           f"The sampler drops each bucket's partial batch (drop_last): {advice}")
    expected = plan.expected_batches if plan is not None else None
    if expected is not None and num_batches < MIN_BATCH_FRACTION * expected:
        raise BatchingError(
            f"epoch {epoch} produced {num_batches} batches where its audio implies about {expected:.0f} "
            f"({plan.describe()}): most cuts were dropped as partial batches; {advice}")
