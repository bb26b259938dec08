"""The dynamo settings under which Zipformer models compile once: `compile_settings()`.

Zipformer modules read many Python floats (Balancer and Whiten constants, dropout and skip rates,
limits, ScheduledFloat defaults). Under torch.compile(dynamic=True), dynamo (torch 2.13) lifts
every such float into a symbolic graph input, then its pass that turns symbolic floats into
tensors (torch/fx/passes/_tensorify_python_scalars.py) gives up on some, specialises them all and
restarts the analysis of the frame: every first compilation traced the model twice (the backend
was called twice, e.g. graphs of 1192 and then 793 inputs for the XS encoder in training).
Specialising floats from the start traces once (the test stack's first compiled training step:
30 s instead of 63 s on a 2-core CPU; bench/compile_check.py measures the XS model). Nothing
that changes from step to step is a Python float under tracing (schedules and random decisions
are tensors there, nn/randomness.py), so the specialised values do not cause recompilations
(tests/test_compile.py checks it).

Use it around the calls of a compiled function (dynamo reads the setting when it traces, on the
first call, not in torch.compile()):

    compiled = torch.compile(model.forward_encoder, fullgraph=True, dynamic=True)
    with compile_settings():
        out = compiled(x, lens)
"""
import torch


def compile_settings():
    """A context manager: torch._dynamo.config with specialize_float=True inside it."""
    return torch._dynamo.config.patch(specialize_float=True)
