"""compile_backend: the inductor backend of compile_encoder's training graphs.

Its behaviour on a training graph (one compilation for new batch shapes) is tested in
tests/test_compile.py; here its two pieces: every forward output is marked user-visible, and
the FX graph cache key names this backend through a post-grad pass that changes nothing and
still runs the pass a user configured.
"""
import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

from zipformer_fast.compile_backend import _all_outputs_visible_inner_compile, _cache_key_tag, keeps_saved_strides


class _UserPass(CustomGraphPass):
    def __init__(self):
        self.graphs = []

    def __call__(self, graph):
        self.graphs.append(graph)

    def uuid(self):
        return "user-pass-7"


def test_cache_key_tag_names_the_backend_and_keeps_the_users_pass():
    alone = _cache_key_tag(None)
    assert "inductor_keeping_saved_strides" in str(alone.uuid())
    alone(torch.fx.Graph())  # changes nothing, needs nothing

    user = _UserPass()
    tag = _cache_key_tag(user)
    graph = torch.fx.Graph()
    tag(graph)
    assert user.graphs == [graph]
    assert "user-pass-7" in str(tag.uuid()) and tag.uuid() != alone.uuid()


def test_cache_key_tag_bypasses_the_cache_for_a_pass_without_uuid():
    assert _cache_key_tag(lambda graph: None).uuid() is None


def test_inner_compile_marks_every_forward_output_user_visible(monkeypatch):
    from torch._inductor import compile_fx as cfx

    assert keeps_saved_strides()
    seen = {}
    monkeypatch.setattr(cfx, "compile_fx_inner", lambda gm, example_inputs, **kw: seen.setdefault("gm", gm))
    gm = torch.fx.symbolic_trace(lambda x: (x + 1, x * 2, 3))
    _all_outputs_visible_inner_compile()(gm, [torch.ones(2)])
    out = next(iter(seen["gm"].graph.find_nodes(op="output")))
    assert out.meta["user_visible_output_idxs"] == [0, 1]
