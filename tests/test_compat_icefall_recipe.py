"""icefall's own LibriSpeech Zipformer recipe (train.py get_model, model.py AsrModel.forward with
pruned RNN-T + CTC losses, get_parameter_groups_with_lrs) running on zipformer_fast: the model
accelerated, k2 replaced by zipformer_fast.compat.k2, the step taken by our ScaledAdam.

Needs an icefall checkout: set ICEFALL_DIR (CI has none, so there this test is skipped, and says
so). icefall.utils imports kaldialign and pypinyin at module level for WER alignment and Chinese
text, unrelated to training; when they are not installed they are stubbed here.
"""
import os
import sys
import types

import pytest
import torch

import zipformer_fast
import zipformer_fast.compat.k2 as k2_compat
from zipformer_fast.optim import ScaledAdam

ICEFALL_DIR = os.environ.get("ICEFALL_DIR")
RECIPE = "egs/librispeech/ASR/zipformer"
pytestmark = pytest.mark.skipif(not ICEFALL_DIR or not os.path.isdir(os.path.join(ICEFALL_DIR or "", RECIPE)),
                                reason="set ICEFALL_DIR to an icefall checkout to run icefall's recipe code")

XS_FLAGS = dict(num_encoder_layers="1,1,1,1,1,1", downsampling_factor="1,2,4,8,4,2",
                feedforward_dim="96,128,160,192,160,128", num_heads="2,2,2,4,2,2", encoder_dim="64,80,96,128,96,80",
                query_head_dim="16", value_head_dim="8", pos_head_dim="4", pos_dim=16,
                encoder_unmasked_dim="48,48,64,64,64,48", cnn_module_kernel="15,15,7,7,7,15", decoder_dim=64,
                joiner_dim=64, causal=False, chunk_size="-1", left_context_frames="-1", use_transducer=True,
                use_ctc=True, use_attention_decoder=False, use_cr_ctc=False, vocab_size=64, blank_id=0,
                context_size=2, feature_dim=80)


class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


@pytest.fixture
def recipe(monkeypatch):
    before = set(sys.modules)
    for name in ("k2", "k2.version", "k2.ragged"):
        # setitem-then-delitem: monkeypatch restores the absence too, so no other test sees our k2
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)
    k2_compat.install()
    for name in ("kaldialign", "pypinyin", "pypinyin.contrib", "pypinyin.contrib.tone_convert"):
        try:
            __import__(name)
        except ImportError:
            monkeypatch.setitem(sys.modules, name, _Stub(name))
    monkeypatch.syspath_prepend(ICEFALL_DIR)
    monkeypatch.syspath_prepend(os.path.join(ICEFALL_DIR, RECIPE))
    # train.py sets torch's thread counts at import; interop threads can be set once per process.
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_interop_threads", lambda n: None)
    import train
    torch.set_num_threads(threads)
    yield train
    root = os.path.realpath(ICEFALL_DIR)
    for name in set(sys.modules) - before:  # the recipe's top-level module names (model, scaling, ...)
        path = getattr(sys.modules[name], "__file__", None) or ""
        if os.path.realpath(path).startswith(root):  # not torch's lazily imported modules
            del sys.modules[name]


def test_icefall_recipe_trains_on_zipformer_fast_without_k2(recipe):
    params = recipe.get_params()
    params.update(XS_FLAGS)
    torch.manual_seed(0)
    model = recipe.get_model(params).eval()
    x, x_lens = torch.randn(2, 200, 80), torch.tensor([200, 160])
    y = k2_compat.RaggedTensor([[5, 3, 9, 2], [7, 8]])
    kwargs = dict(x=x, x_lens=x_lens, y=y, prune_range=5, am_scale=0.0, lm_scale=0.25)
    with torch.no_grad():
        ref = model(**kwargs)[:3]  # simple, pruned, ctc losses of icefall's own modules
    zipformer_fast.accelerate(model, backend="reference")
    with torch.no_grad():
        got = model(**kwargs)[:3]
    for a, b in zip(got, ref):
        assert abs(float(a) - float(b)) <= 1e-5 * abs(float(b))
    model.train()
    recipe.set_batch_count(model, 100.0)
    opt = ScaledAdam(recipe.get_parameter_groups_with_lrs(model, lr=0.045, include_names=True), lr=0.045,
                     clipping_scale=2.0)
    simple, pruned, ctc = model(**kwargs)[:3]
    loss = 0.5 * simple + pruned + 0.2 * ctc
    assert torch.isfinite(loss)
    loss.backward()
    before = model.encoder.encoders[0].layers[0].feed_forward1.in_proj.weight.detach().clone()
    opt.step()
    assert not torch.equal(model.encoder.encoders[0].layers[0].feed_forward1.in_proj.weight, before)


AED_FLAGS = dict(use_attention_decoder=True, attention_decoder_dim=32, attention_decoder_num_layers=1,
                 attention_decoder_attention_dim=32, attention_decoder_num_heads=2,
                 attention_decoder_feedforward_dim=48, sos_id=1, eos_id=1)


@pytest.mark.parametrize("use_cr_ctc", [False, True])
def test_asr_model_forward_gives_icefalls_loss_terms(recipe, use_cr_ctc):
    """Our AsrModel.forward against icefall's on the same weights (icefall's checkpoint loaded
    strictly): every term within 1e-5 relative, transducer + CTC + attention decoder, with and
    without CR-CTC (eval, so the two copies differ by nothing)."""
    from zipformer_fast import ZipformerConfig
    from zipformer_fast.asr import AsrModel, AttentionDecoderConfig
    params = recipe.get_params()
    params.update(XS_FLAGS)
    params.update(AED_FLAGS)
    torch.manual_seed(0)
    theirs = recipe.get_model(params).eval()
    ours = AsrModel(ZipformerConfig.preset("XS"), vocab_size=64, use_transducer=True, use_ctc=True,
                    use_attention_decoder=True, attention_decoder_config=AttentionDecoderConfig(
                        decoder_dim=32, num_layers=1, attention_dim=32, num_heads=2, feedforward_dim=48)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x, x_lens = torch.randn(2, 200, 80), torch.tensor([200, 160])
    ys = [[5, 3, 9, 2], [7, 8]]
    kwargs = dict(prune_range=5, am_scale=0.0, lm_scale=0.25, use_cr_ctc=use_cr_ctc)
    with torch.no_grad(), zipformer_fast.use_backend("reference"):
        want = theirs(x, x_lens, k2_compat.RaggedTensor(ys), **kwargs)
        got = ours(x, x_lens, ys, **kwargs)
    assert len(got) == len(want) == 5
    for name, a, b in zip(got._fields, got, want):
        if b.numel() == 0:  # icefall's empty tensor for an absent term; ours is a zero
            assert name == "cr_loss" and not use_cr_ctc and a.item() == 0.0
            continue
        assert abs(a.item() - b.item()) <= 1e-5 * abs(b.item()) + 1e-6, (name, a.item(), b.item())
