"""Training progress on rank 0: a tqdm bar, a log line every --log-interval steps, tensorboard
scalars (when the tensorboard package is installed), and a summary of the loss curve.

Losses are logged per frame (sum over the interval / frames after 4x subsampling), as icefall does.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, Optional

log = logging.getLogger("train")


class RunLog:
    def __init__(self, exp_dir: Path, enabled: bool, tensorboard: bool, progress: bool,
                 interval: int, total: Optional[int] = None, start: int = 0):
        self.enabled, self.interval = enabled, max(1, interval)
        self.acc: Dict[str, float] = {}
        self.curve = []  # (batch, loss per frame) per interval
        self.valid = []
        self.t_last = time.time()
        self.writer = self.bar = None
        if not enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(log_dir=str(exp_dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed: no tensorboard logs (pip install tensorboard)")
        if progress:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=2.0)
            except ImportError:
                log.warning("tqdm is not installed: no progress bar (pip install tqdm)")

    def step(self, batch: int, info: Dict[str, float], lr: float, grad_scale: Optional[float]) -> None:
        if not self.enabled:
            return
        for k, v in info.items():
            self.acc[k] = self.acc.get(k, 0.0) + v
        if self.bar is not None:
            self.bar.update(1)
        if batch % self.interval:
            return
        frames = max(self.acc.get("frames", 1.0), 1.0)
        per_frame = {k: v / frames for k, v in self.acc.items() if k not in ("frames", "utterances")}
        self.curve.append((batch, per_frame["loss"]))
        dt = time.time() - self.t_last
        self.t_last = time.time()
        terms = " ".join(f"{k} {v:.4f}" for k, v in per_frame.items())
        extra = f" grad_scale {grad_scale:g}" if grad_scale is not None else ""
        msg = f"batch {batch}: {terms} (per frame) lr {lr:.3g}{extra} [{dt / self.interval:.2f} s/step]"
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {per_frame['loss']:.3f} lr {lr:.2g}")
            self.bar.write(msg)
        else:
            log.info(msg)
        if self.writer is not None:
            for k, v in per_frame.items():
                self.writer.add_scalar(f"train/{k}", v, batch)
            self.writer.add_scalar("train/lr", lr, batch)
            if grad_scale is not None:
                self.writer.add_scalar("train/grad_scale", grad_scale, batch)
        self.acc = {}

    def scalars(self, batch: int, values: Dict[str, float]) -> None:
        if not self.enabled:
            return
        self.valid.append((batch, values))
        msg = f"batch {batch}: " + " ".join(f"{k} {v:.4f}" for k, v in values.items())
        (self.bar.write if self.bar is not None else log.info)(msg)
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"valid/{k}", v, batch)

    def summary(self) -> dict:
        return {"loss_curve": self.curve, "valid": self.valid}

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
