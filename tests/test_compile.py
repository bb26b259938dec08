"""The XS model under torch.compile: one graph (fullgraph, no breaks) on both backends in inference
and training, a compiled training loop that does not recompile as everything icefall varies moves,
the compiled graph computing what eager computes, the golden file holding for the compiled path, and
an eval forward free of host synchronisation (what a CUDA-graph capture needs).

Tracing uses dynamo's "eager" backend where only the graph matters and "aot_eager" where the
backward must be traced too (no inductor C++ compile: seconds, not minutes). Random training
decisions are drawn on device while tracing (zipformer_fast.nn.randomness); eager runs with
`use_device_side_randomness()` compute exactly the compiled graph's function.

Tracing the XS model in training (and the inductor compile) takes several CPU-minutes on a 2-core
machine, so those tests are marked slow and run with `pytest -m slow` (bench/compile_check.py measures
the same things); the eval traces, the sync checks and tests/test_device_randomness.py always run.
"""

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from golden_check import check_against_golden
from zipformer_fast import use_backend
from zipformer_fast.asr.model import AsrModel
from zipformer_fast.compile_settings import compile_settings
from zipformer_fast.config import ZipformerConfig
from zipformer_fast.nn import set_batch_count
from zipformer_fast.nn.randomness import use_device_side_randomness


def build_xs(seed: int = 0) -> AsrModel:
    torch.manual_seed(seed)
    return AsrModel(ZipformerConfig.preset("XS"), vocab_size=64, use_transducer=True, use_ctc=True)


def xs_inputs(B: int = 2, T: int = 60, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(T - 15, T + 1, (B,), generator=g)
    lens[0] = T
    return torch.randn(B, T, 80, generator=g), lens


# ------------------------------------------------------------------------------ no host sync
class _NoHostSync(TorchDispatchMode):
    """Fails on every op that reads a tensor value back to the host. Tensor.tolist does not pass the
    dispatcher on CPU, so it is patched too."""
    FORBIDDEN = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
                 torch.ops.aten.is_nonzero.default, torch.ops.aten.item.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.FORBIDDEN:
            raise AssertionError(f"host synchronisation: {func}")
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._tolist = torch.Tensor.tolist

        def tolist(_):
            raise AssertionError("host synchronisation: Tensor.tolist")
        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


@pytest.mark.parametrize("sync", [lambda: bool(torch.ones(1) > 0), lambda: torch.ones(3).nonzero(),
                                  lambda: torch.ones(2).tolist(), lambda: torch.ones(()).item()])
def test_the_sync_detector_detects(sync):
    with pytest.raises(AssertionError, match="host synchronisation"), _NoHostSync():
        sync()


def test_eval_encode_never_synchronises_with_the_host():
    model = build_xs().eval()
    x, lens = xs_inputs()
    with torch.no_grad(), use_backend("reference"):
        want, want_lens = model.forward_encoder(x, lens)  # with its up-front value checks
        with _NoHostSync():
            got, got_lens = model.encode(x, lens)
    assert torch.equal(got, want) and torch.equal(got_lens, want_lens)
    # The checks that do read values are in check_input_values, which forward_encoder runs first.
    with pytest.raises(AssertionError, match="host synchronisation"), _NoHostSync():
        model.check_input_values(x, lens)


def test_forward_encoder_keeps_its_value_checks():
    model = build_xs().eval()
    x, lens = xs_inputs()
    x[0, 3, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.forward_encoder(x, lens)


# ------------------------------------------------------------------------------- one graph
@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("mode", ["inference", pytest.param("train", marks=pytest.mark.slow)])
def test_whole_model_traces_as_one_graph_and_computes_eagers_function(backend, mode):
    """fullgraph=True raises at the first graph break. Inference: eval under no_grad; train: training
    mode with a batch count inside every schedule's ramp (all skips, Balancers, Whitens and dropouts
    live). The traced graph must give eager's output from the same seed."""
    if backend == "triton":
        pytest.importorskip("triton")
    model = build_xs()
    model.train(mode == "train")
    set_batch_count(model, 1500.0)
    x, lens = xs_inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model.forward_encoder, fullgraph=True, backend="eager")
    with use_backend(backend), torch.set_grad_enabled(mode == "train"):
        torch.manual_seed(5)
        got, got_lens = compiled(x, lens)
        torch.manual_seed(5)
        with use_device_side_randomness():
            want, want_lens = model.forward_encoder(x, lens)
    assert torch.equal(got_lens, want_lens)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_compile_encoder_compiles_each_region_once_for_all_lengths_with_static_channels():
    """AsrModel.compile_encoder (the recipes' --compile): Conv-Embed and the encoder stacks, each
    compiled once for two batch sizes and lengths, give eager's outputs; batch and time are
    symbolic, the channel dims static (see compile_encoder for the inductor failures this avoids)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    model = build_xs().eval()
    counter = CompileCounterWithBackend("eager")
    torch._dynamo.reset()
    model.compile_encoder(backend=counter)
    with torch.no_grad():
        for B, T in ((2, 60), (3, 75)):
            x, lens = xs_inputs(B, T)
            got, got_lens = model.encode(x, lens)
            want, want_lens = AsrModel.encode(model, x, lens)
            assert torch.equal(got_lens, want_lens)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert counter.frame_count == 2  # one graph per region, none recompiled
    for graph in counter.graphs:
        inputs = [n.meta["example_value"] for n in graph.graph.nodes if n.op == "placeholder"]
        size = [t for t in inputs if isinstance(t, torch.Tensor)][0].shape  # the (B, T, C) input
        assert not isinstance(size[2], torch.SymInt), size  # channels: 80 fbank, then D0
        assert isinstance(size[0], torch.SymInt) and isinstance(size[1], torch.SymInt), size


def test_compile_encoder_compiles_both_regions_with_the_stride_keeping_inductor_backend(monkeypatch):
    """compile_encoder compiles Conv-Embed and the stacks (compile_embed=False leaves Conv-Embed
    eager); plain inductor becomes compile_backend.inductor_keeping_saved_strides (its reason:
    tests/test_compile_inductor_training.py), other backends and inductor with a mode are passed
    through. The compiled encode computes the eager encode."""
    from zipformer_fast.compile_backend import inductor_keeping_saved_strides

    compiled = []

    def recording_compile(fn, **kwargs):
        compiled.append((getattr(fn, "__name__", type(fn).__name__), kwargs["backend"]))
        return fn

    monkeypatch.setattr(torch, "compile", recording_compile)
    model = build_xs().eval()
    keep = inductor_keeping_saved_strides
    for kwargs, regions, backend in (
            ({}, ["Conv2dSubsampling", "_encode_embedded"], keep),
            ({"backend": "inductor"}, ["Conv2dSubsampling", "_encode_embedded"], keep),
            ({"backend": "inductor", "mode": "max-autotune-no-cudagraphs"}, ["Conv2dSubsampling", "_encode_embedded"],
             "inductor"),
            ({"backend": "aot_eager"}, ["Conv2dSubsampling", "_encode_embedded"], "aot_eager"),
            ({"compile_embed": False}, ["_encode_embedded"], keep)):
        compiled.clear()
        model.compile_encoder(**kwargs)
        assert compiled == [(name, backend) for name in regions], kwargs
    x, lens = xs_inputs(2, 60)
    with torch.no_grad():
        got, got_lens = model.encode(x, lens)
        want, want_lens = AsrModel.encode(model, x, lens)
    assert torch.equal(got_lens, want_lens) and torch.equal(got, want)


def test_compile_encoder_runs_a_region_eagerly_after_dynamo_gives_up_on_it(monkeypatch):
    """A compiled region that reaches dynamo's recompile limit (an error under fullgraph=True)
    runs eagerly from then on, with a warning, and gives the eager numbers; the other region
    stays compiled."""
    from torch._dynamo.exc import FailOnRecompileLimitHit

    calls = {}

    def compile_that_gives_up_on_the_second_call(fn, **kwargs):
        name = getattr(fn, "__name__", type(fn).__name__)

        def compiled(*args):
            calls[name] = calls.get(name, 0) + 1
            if name == "_encode_embedded" and calls[name] >= 2:
                raise FailOnRecompileLimitHit("recompile_limit reached with fullgraph=True")
            return fn(*args)

        return compiled

    monkeypatch.setattr(torch, "compile", compile_that_gives_up_on_the_second_call)
    model = build_xs().eval()
    model.compile_encoder(backend="aot_eager")
    for T in (60, 72, 80):
        x, lens = xs_inputs(2, T)
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got, got_lens = model.encode(x, lens)
            want, want_lens = AsrModel.encode(model, x, lens)
        assert torch.equal(got_lens, want_lens) and torch.equal(got, want)
        gave_up = [w for w in caught if "recompile limit" in str(w.message)]
        assert len(gave_up) == (1 if T == 72 else 0), T
    assert calls == {"Conv2dSubsampling": 3, "_encode_embedded": 2}  # the stacks' third call ran eagerly


# ------------------------------------------------------------------------ compiled training
def _small_stack():
    """One downsampled stack of one layer at XS's smallest widths: every kind of step-to-step
    variation a Zipformer layer has (ScheduledFloats, Balancer/Whiten firing, skip masks, dropout,
    the bypass's random straight-through, downsample / upsample), traced in seconds."""
    from zipformer_fast.nn.encoder_stack import DownsampledZipformer2Encoder, Zipformer2Encoder
    from zipformer_fast.nn.layer import Zipformer2EncoderLayer

    torch.manual_seed(0)
    layer = Zipformer2EncoderLayer(embed_dim=32, pos_dim=16, num_heads=2, query_head_dim=8, pos_head_dim=4,
                                   value_head_dim=4, feedforward_dim=48, cnn_module_kernel=7)
    stack = Zipformer2Encoder(layer, 1, pos_dim=16, dropout=0.1, warmup_begin=0.0, warmup_end=1000.0)
    return DownsampledZipformer2Encoder(stack, dim=32, downsample=2, dropout=0.1)


def _stack_loop(model, forward, steps, first_seed=0):
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    torch.manual_seed(5 + first_seed)
    model.train()
    losses = []
    for i, (B, T, batch_count) in enumerate(steps, start=first_seed):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(T, B, 32, generator=g)
        pad = torch.arange(T)[None, :] >= torch.randint(T // 2, T + 1, (B,), generator=g)[:, None]
        pad[0] = False
        set_batch_count(model, batch_count)
        # the stack's own frame rate; contiguous, as the model's own slicing is inside its graph
        loss = forward(x, src_key_padding_mask=pad[:, ::2].contiguous()).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_compiled_stack_training_compiles_in_its_first_step_only_and_matches_eager():
    """The CI-sized guard (the XS loop below is the slow, full one): a training loop over a
    compiled stack whose T (odd and even), B and batch count (crossing schedule breakpoints)
    change every step compiles in its first step only, with dynamic shapes, and its losses equal
    the eager loop's with device-side randomness from the same seeds. aot_eager partitions with
    the min-cut partitioner (as inductor does), which would move a draw that only backward reads
    (Balancer, Whiten, limit_param_value firing) into the backward graph and shift the forward's
    random stream; after the loop, the compiled graph in eval mode computes what eager computes."""
    import copy
    from torch._dynamo.testing import CompileCounterWithBackend

    steps = [(2, 30, 0.0), (3, 37, 700.0), (2, 24, 2500.0), (3, 45, 9000.0), (2, 41, 30000.0)]
    model = _small_stack()
    eager_model = copy.deepcopy(model)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    forward = torch.compile(model.forward, fullgraph=True, dynamic=True, backend=counter)
    with use_backend("reference"), compile_settings():
        losses = _stack_loop(model, forward, steps[:1])
        assert counter.frame_count == 1  # one trace: floats specialised, no restarted analysis
        losses += _stack_loop(model, forward, steps[1:], first_seed=1)
        assert counter.frame_count == 1
        with use_device_side_randomness():
            eager = _stack_loop(eager_model, eager_model.forward, steps[:1])
            eager += _stack_loop(eager_model, eager_model.forward, steps[1:], first_seed=1)
        assert losses == pytest.approx(eager, rel=1e-5)
        fired = [(n, m.fired) for n, m in model.named_modules() if hasattr(m, "fired")]
        assert fired and any(bool(f) for _, f in fired) and not all(bool(f) for _, f in fired)
        for (name, f), (_, g) in zip(fired, ((n, m.fired) for n, m in eager_model.named_modules() if hasattr(m, "fired"))):
            assert torch.equal(f, g), name
        model.eval()
        x, pad = torch.randn(33, 3, 32), torch.zeros(3, 17, dtype=torch.bool)
        pad[1, 12:] = True
        with torch.no_grad():
            torch.testing.assert_close(forward(x, src_key_padding_mask=pad),
                                       model.forward(x, src_key_padding_mask=pad), rtol=1e-5, atol=1e-6)


def test_inductor_training_of_a_stack_compiles_once_for_new_batch_shapes():
    """The recipes' default backend (compile_encoder's inductor_keeping_saved_strides, C++ on the
    CPU) on a training stack, batch and length new at every step: one compilation. With torch's
    own inductor, AOTAutograd re-strides saved activations to inductor's layouts for the backward
    compile and the guards that adds pin batch and time, and inductor's convolution_backward
    lowering pins time (ops.traced_conv): each new shape recompiled. Losses are the eager loop's
    up to inductor's float reordering (with fallback_random: inductor draws with torch's generator,
    as eager does, instead of its own)."""
    import copy
    from torch._dynamo.testing import CompileCounterWithBackend

    from zipformer_fast.compile_backend import inductor_keeping_saved_strides, keeps_saved_strides

    assert keeps_saved_strides()
    steps = [(2, 30, 0.0), (3, 37, 700.0), (2, 26, 2500.0), (3, 45, 9000.0)]
    model = _small_stack()
    eager_model = copy.deepcopy(model)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(inductor_keeping_saved_strides)
    forward = torch.compile(model.forward, fullgraph=True, dynamic=True, backend=counter)
    with use_backend("reference"), compile_settings(), torch._inductor.config.patch(fallback_random=True):
        losses = _stack_loop(model, forward, steps)
        assert counter.frame_count == 1
        with use_device_side_randomness():
            eager = _stack_loop(eager_model, eager_model.forward, steps)
    assert losses == pytest.approx(eager, rel=1e-4)


@pytest.mark.slow  # several CPU-minutes of tracing
def test_compiled_training_loop_does_not_recompile_and_matches_eager():
    """Four steps with new T and B each, the batch count crossing schedule breakpoints (skip rates,
    Balancer probabilities, dropout), random firing everywhere: one compilation with dynamic shapes
    under compile_settings() (at most 3 allowed), and per-step losses equal to the eager loop with device-side randomness
    from the same seeds (aot_eager runs the same aten ops in the same order)."""
    import copy
    from torch._dynamo.testing import CompileCounterWithBackend

    from bench.compile_check import train_loop

    def data():
        for i, (B, T, bc) in enumerate([(2, 60, 0.0), (3, 75, 700.0), (2, 48, 2500.0), (3, 90, 9000.0)]):
            x, lens = xs_inputs(B, T, seed=i)
            yield x, lens, bc

    base = build_xs()
    compiled_model, eager_model = copy.deepcopy(base), copy.deepcopy(base)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    encode = torch.compile(compiled_model.forward_encoder, fullgraph=True, dynamic=True, backend=counter)
    with compile_settings():
        compiled = train_loop(compiled_model, encode, data(), "reference")
    with use_device_side_randomness():
        eager = train_loop(eager_model, eager_model.forward_encoder, data(), "reference")
    assert counter.frame_count == 1
    assert compiled == pytest.approx(eager, rel=1e-5)
    for (name, p), q in zip(compiled_model.named_parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    # The Whiten probabilities switched in the compiled backward as in eager's.
    whitens = [(m.prob_tensor, n.prob_tensor) for m, n in zip(compiled_model.modules(), eager_model.modules())
               if hasattr(m, "prob_tensor")]
    assert whitens and all(torch.equal(a, b) for a, b in whitens)


# ---------------------------------------------------------------------------------- golden
@pytest.mark.slow  # several CPU-minutes of tracing
def test_compiled_path_matches_golden(golden):
    """golden_XS.pt through the aot_eager-compiled forward_encoder: forward activations and, with
    icefall's recorded Balancer/Whiten firing set replayed, every gradient (same tolerances as
    tests/test_golden.py)."""
    model = build_xs()
    torch._dynamo.reset()
    model.forward_encoder = torch.compile(model.forward_encoder, fullgraph=True, backend="aot_eager")
    with use_backend("reference"):
        errs = check_against_golden(model, golden, rtol=1e-5, grads=True)
    assert sum(k.startswith("param_grads[") for k in errs) == len(golden["param_grads"])


# -------------------------------------------------------------------------------- inductor
@pytest.mark.slow  # several CPU-minutes of tracing
def test_inductor_compiled_eval_encoder_matches_eager():
    """The default backend (inductor, C++ on CPU) on the sync-free eval encoder with dynamic shapes:
    same output as eager for two lengths (inductor may reorder float sums: 1e-5)."""
    model = build_xs().eval()
    torch._dynamo.reset()
    encode = torch.compile(model.encode, fullgraph=True, dynamic=True)
    with torch.no_grad(), use_backend("reference"):
        for B, T in ((2, 60), (3, 77)):
            x, lens = xs_inputs(B, T)
            got, got_lens = encode(x, lens)
            want, want_lens = model.encode(x, lens)
            assert torch.equal(got_lens, want_lens)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ CUDA graphs
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_cuda_graph_capture_of_eval_encoder(backend):
    """A plain torch.cuda.CUDAGraph capture of the sync-free encoder replays eager's output for new
    inputs of the captured shape."""
    model = build_xs().cuda().eval()
    x, lens = (t.cuda() for t in xs_inputs(2, 80))
    static_x, static_lens = x.clone(), lens.clone()
    with torch.no_grad(), use_backend(backend):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: caches, kernel compilation
                model.encode(static_x, static_lens)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out, static_out_lens = model.encode(static_x, static_lens)
        x2, lens2 = (t.cuda() for t in xs_inputs(2, 80, seed=1))
        static_x.copy_(x2)
        static_lens.copy_(lens2)
        graph.replay()
        want, want_lens = model.encode(x2, lens2)
    assert torch.equal(static_out_lens, want_lens)
    torch.testing.assert_close(static_out, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- fused ops under dynamic shapes
def test_fused_training_compiles_with_dynamic_shapes():
    """The fused backend in training under torch.compile(dynamic=True) (what automatic-dynamic
    recompiles reach on the second input length): the ops that wrap several launches in one
    autograd.Function (conv_chain in Conv2dSubsampling, the gated convolution, the Balancer's
    fused gradient) trace as compositions of single custom ops; two lengths, no
    recompilation, eager's output and input gradient."""
    pytest.importorskip("triton")
    from torch._dynamo.testing import CompileCounterWithBackend

    from zipformer_fast.nn.subsampling import Conv2dSubsampling

    torch.manual_seed(0)
    model = Conv2dSubsampling(80, 32).train()
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=counter)
    frames = []
    with use_backend("triton"):
        for B, T in ((2, 40), (3, 47)):
            x = torch.randn(B, T, 80, requires_grad=True)
            lens = torch.full((B,), T)
            torch.manual_seed(1)
            with use_device_side_randomness():
                want, _ = model(x, lens)
            (want_grad,) = torch.autograd.grad(want.square().sum(), x)
            torch.manual_seed(1)
            got, _ = compiled(x, lens)
            (got_grad,) = torch.autograd.grad(got.square().sum(), x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-4)
            frames.append(counter.frame_count)
    # dynamo may restart the first analysis once (two graphs for the first call); none after
    assert frames[0] == frames[1] <= 2
