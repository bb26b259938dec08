"""ScaledAdam optimizer and Eden/Eden2 LR schedulers (icefall semantics), with a compiled
multi-tensor step (csrc/), a torch._foreach fallback and a plain reference."""
from .scaled_adam import IMPLEMENTATIONS, ScaledAdam
from .scheduler import Eden, Eden2, LRScheduler
from .icefall_state import scaled_adam_state_from_icefall, scaled_adam_state_to_icefall

__all__ = ["ScaledAdam", "Eden", "Eden2", "LRScheduler", "IMPLEMENTATIONS", "scaled_adam_state_from_icefall",
           "scaled_adam_state_to_icefall"]
