"""The recipes' head options: icefall's flag names and defaults for the attention decoder and
CR-CTC, icefall's rules (CR-CTC needs CTC; CTC + AED without a transducer needs scales summing to
1), checkpoints rebuilding the trained heads, decode refusing methods whose head is missing, and
the synthetic recipe's --heads settings."""
import pytest

from recipes.decode import check_method, get_parser as decode_parser, result_names
from recipes.lib.model_factory import attention_decoder_fields, build_model, model_from_checkpoint_params
from recipes.lib.options import get_parser, validate
from recipes.synthetic.run import HEADS
from zipformer_fast.asr.search import DECODING_METHODS
from zipformer_fast.config import ZipformerConfig

BASE = ["--manifest-dir", "m", "--bpe-model", "b", "--exp-dir", "e"]


def parse(*flags):
    return get_parser().parse_args(BASE + list(flags))


def test_icefall_flag_names_and_defaults():
    a = parse()
    assert (a.use_attention_decoder, a.use_cr_ctc) == (False, False)
    assert (a.attention_decoder_loss_scale, a.cr_loss_scale, a.ctc_loss_scale, a.time_mask_ratio) == (0.8, 0.2, 0.2, 2.5)
    assert attention_decoder_fields(a) == dict(decoder_dim=512, num_layers=6, attention_dim=512, num_heads=8,
                                               feedforward_dim=2048)
    a = parse("--use-transducer", "0", "--use-ctc", "1", "--use-attention-decoder", "1", "--use-cr-ctc", "1",
              "--ctc-loss-scale", "0.1", "--attention-decoder-loss-scale", "0.9", "--attention-decoder-dim", "64")
    validate(a)
    assert a.attention_decoder_dim == 64


@pytest.mark.parametrize("flags, msg", [
    (["--use-cr-ctc", "1"], "needs --use-ctc 1"),
    (["--use-transducer", "0", "--use-ctc", "1", "--use-attention-decoder", "1", "--ctc-loss-scale", "0.2",
      "--attention-decoder-loss-scale", "0.9"], "== 1"),
])
def test_icefall_rules_are_enforced(flags, msg):
    with pytest.raises(SystemExit, match=msg):
        validate(parse(*flags))


def test_checkpoint_params_rebuild_the_attention_decoder():
    fields = dict(decoder_dim=16, num_layers=1, attention_dim=16, num_heads=2, feedforward_dim=32)
    model = build_model(ZipformerConfig.preset("XS"), 40, False, True, True, fields)
    params = dict(model_config=vars(model.config), vocab_size=40, use_transducer=False, use_ctc=True,
                  use_attention_decoder=True, attention_decoder=fields)
    rebuilt, _ = model_from_checkpoint_params(params)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.attention_decoder.config.feedforward_dim == 32
    older, _ = model_from_checkpoint_params({k: v for k, v in params.items()
                                             if k not in ("use_attention_decoder", "attention_decoder")})
    assert not older.use_attention_decoder  # checkpoints written before the AED head existed


def test_decode_methods_need_their_heads():
    ctc_aed = dict(use_ctc=True, use_transducer=False, use_attention_decoder=True)
    check_method("ctc_prefix_beam_search_attention_decoder_rescoring", ctc_aed)
    with pytest.raises(SystemExit, match="no transducer"):
        check_method("modified_beam_search_attention_decoder_rescoring", ctc_aed)
    with pytest.raises(SystemExit, match="--use-attention-decoder 1"):
        check_method("ctc_prefix_beam_search_attention_decoder_rescoring", dict(use_ctc=True, use_transducer=True))
    with pytest.raises(SystemExit, match="--use-ctc 1"):
        check_method("ctc_prefix_beam_search", dict(use_ctc=False, use_transducer=True))
    args = decode_parser().parse_args(["--exp-dir", "e", "--manifest-dir", "m", "--bpe-model", "b",
                                       "--decoding-method", "ctc_prefix_beam_search_attention_decoder_rescoring",
                                       "--attention-scales", "0.5", "1"])
    assert result_names(args) == ["ctc_prefix_beam_search_attention_decoder_rescoring-attention_scale_0.5",
                                  "ctc_prefix_beam_search_attention_decoder_rescoring-attention_scale_1"]


def test_synthetic_heads_train_flags_and_methods_are_valid():
    assert HEADS["transducer_ctc"][0] == {}  # the default recipe is unchanged
    for name, (flags, methods) in HEADS.items():
        argv = BASE + [x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", str(v))]
        validate(get_parser().parse_args(argv))
        assert set(methods) <= set(DECODING_METHODS), name


def test_too_long_ctc_targets_stop_training_with_a_clear_error_and_empty_transcripts_train():
    import torch

    from recipes.train import compute_loss
    from zipformer_fast import use_backend
    from zipformer_fast.asr import LossWeights
    torch.manual_seed(0)
    model = build_model(ZipformerConfig.preset("XS"), 40, False, True)
    feats, lens = torch.randn(2, 30, 80), torch.tensor([30, 30])  # 6 encoder frames each
    with use_backend("reference"):
        with pytest.raises(RuntimeError, match="utterances with more tokens than encoder frames"):
            compute_loss(model, feats, lens, [[3] * 7, [4]], 1, LossWeights())
        with pytest.raises(ValueError, match=r"utterances \[0\]"):  # CR-CTC checks before the loss
            compute_loss(model, feats, lens, [[3] * 7, [4]], 1, LossWeights(), use_cr_ctc=True)
        loss, info = compute_loss(model, feats, lens, [[], []], 1, LossWeights())
    assert torch.isfinite(loss) and info["ctc"] > 0
