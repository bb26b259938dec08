"""The torch.compile backend AsrModel.compile_encoder uses for inductor: inductor, with every
output of a forward graph (the saved activations too) in the strides the traced graph gave it.

Why (torch 2.13, seen on CPU): inductor is free to lay out a forward graph's saved activations
as it likes (e.g. the attention weights (H, B, T, T) stored batch-innermost, SimpleDownsample's
(T/2, 2, B, C) view stored pair-innermost). AOTAutograd then re-strides the backward graph's
inputs to those strides before compiling it (_aot_stage2b_bw_compile), and fake-tensor
propagation over the re-strided inputs (a memory-format check in a binary op) adds guards
that pin batch and time (`Eq(B, 6)`, `Eq(T, 158)`): each new batch shape recompiles the
training graph until dynamo's recompile limit. Marking every forward output user-visible
makes inductor keep the traced strides for them (what it already does for the graph's real
outputs; at worst a copy where it would have chosen another layout), so nothing is
re-strided. The other pin, inductor's lowering of convolution_backward, is avoided in the
model (ops.traced_conv).

The FX graph cache's key does not include which outputs are user-visible, so without more it
could serve a graph plain inductor compiled (correct numbers, but its strides and the pinning
guards that come with them). A post-grad pass that changes nothing (_CacheKeyTag, chaining any
pass the user configured) puts this backend's name in the key through the pass's uuid, the
cache's own mechanism for custom passes; a later process then loads its graphs instead of
compiling them again.

`inductor_keeping_saved_strides` is a plain backend callable: torch.compile(fn,
backend=inductor_keeping_saved_strides). It calls inductor's compile_fx with its `inner_compile`
parameter and sets the output node's "user_visible_output_idxs" meta that compile_fx_forward sets
(torch 2.13); on a torch whose inductor lacks that meta it is plain inductor
(`keeps_saved_strides()` says which).
"""
from typing import Callable, Union

import torch


def _all_outputs_visible_inner_compile():
    """compile_fx_inner with every graph output marked user-visible, or None when this torch's
    inductor does not mark them the way this function knows (torch >= 2.6's output-node meta)."""
    try:
        import torch.utils._pytree as pytree
        from torch._inductor import compile_fx as cfx
        from torch._inductor import graph as inductor_graph
    except ImportError:
        return None
    if not hasattr(inductor_graph, "get_user_visible_output_strides"):  # the reader of that meta
        return None

    def inner_compile(gm: torch.fx.GraphModule, example_inputs, **kwargs):
        out = next(iter(gm.graph.find_nodes(op="output")))
        leaves = pytree.arg_tree_leaves(*out.args)
        out.meta["user_visible_output_idxs"] = [i for i, n in enumerate(leaves) if isinstance(n, torch.fx.Node)]
        return cfx.compile_fx_inner(gm, example_inputs, **kwargs)

    return inner_compile


def _cache_key_tag(user_pass):
    """A CustomGraphPass that runs `user_pass` (inductor's configured post-grad post pass, or
    None) and names this backend in its uuid; None where this torch has no CustomGraphPass."""
    try:
        from torch._inductor.custom_graph_pass import CustomGraphPass
    except ImportError:
        return None

    class _CacheKeyTag(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            if user_pass is not None:
                user_pass(graph)

        def uuid(self):
            if user_pass is None:
                return "zipformer_fast.inductor_keeping_saved_strides.v1"
            inner = user_pass.uuid() if hasattr(user_pass, "uuid") else None
            # a pass without a uuid makes inductor bypass its cache, as it would without this tag
            return None if inner is None else ("zipformer_fast.inductor_keeping_saved_strides.v1", inner)

    return _CacheKeyTag()


def keeps_saved_strides() -> bool:
    """Whether inductor_keeping_saved_strides is more than plain inductor on this torch."""
    return _all_outputs_visible_inner_compile() is not None


def inductor_keeping_saved_strides(gm: torch.fx.GraphModule, example_inputs):
    """A torch.compile backend: inductor, forward outputs in their traced strides (module docstring)."""
    from torch._inductor import config
    from torch._inductor.compile_fx import compile_fx

    inner = _all_outputs_visible_inner_compile()
    if inner is None:
        return compile_fx(gm, example_inputs)
    tag = _cache_key_tag(config.post_grad_custom_post_pass)
    patches = {"fx_graph_cache": False} if tag is None else {"post_grad_custom_post_pass": tag}
    return compile_fx(gm, example_inputs, inner_compile=inner, config_patches=patches)


def training_backend(backend: Union[str, Callable], compile_kwargs: dict) -> Union[str, Callable]:
    """The backend compile_encoder passes to torch.compile: inductor_keeping_saved_strides for
    plain "inductor" (no mode / options, which torch.compile accepts only with the name), else
    `backend` itself."""
    if backend == "inductor" and not compile_kwargs.get("mode") and not compile_kwargs.get("options"):
        return inductor_keeping_saved_strides
    return backend
