"""ZipformerConfig presets equal icefall's LibriSpeech recipe flags (RESULTS.md / train.py), and
invalid configurations raise ValueError naming the offending field."""
import pytest

from zipformer_fast.config import BASE_LR, ZipformerConfig

SHARED = dict(num_heads=(4, 4, 4, 8, 4, 4), query_head_dim=(32,) * 6, value_head_dim=(12,) * 6,
              pos_head_dim=(4,) * 6, pos_dim=48, cnn_module_kernel=(31, 31, 15, 15, 15, 31),
              downsampling_factor=(1, 2, 4, 8, 4, 2), decoder_dim=512, joiner_dim=512, context_size=2,
              vocab_size=500, causal=False, chunk_size=(-1,), left_context_frames=(-1,))
ICEFALL = {
    "S": dict(num_encoder_layers=(2, 2, 2, 2, 2, 2), feedforward_dim=(512, 768, 768, 768, 768, 768),
              encoder_dim=(192, 256, 256, 256, 256, 256), encoder_unmasked_dim=(192,) * 6),
    "M": dict(num_encoder_layers=(2, 2, 3, 4, 3, 2), feedforward_dim=(512, 768, 1024, 1536, 1024, 768),
              encoder_dim=(192, 256, 384, 512, 384, 256), encoder_unmasked_dim=(192, 192, 256, 256, 256, 192)),
    "L": dict(num_encoder_layers=(2, 2, 4, 5, 4, 2), feedforward_dim=(512, 768, 1536, 2048, 1536, 768),
              encoder_dim=(192, 256, 512, 768, 512, 256), encoder_unmasked_dim=(192, 192, 256, 320, 256, 192)),
}


@pytest.mark.parametrize("size", ["S", "M", "L"])
def test_preset_equals_icefall_flags(size):
    cfg = ZipformerConfig.preset(size)
    for key, value in {**SHARED, **ICEFALL[size]}.items():
        assert getattr(cfg, key) == value, key
    assert cfg.output_dim == {"S": 256, "M": 512, "L": 768}[size]


def test_base_learning_rates():
    assert (BASE_LR["S"], BASE_LR["M"], BASE_LR["L"]) == (0.04, 0.045, 0.045)


def test_single_values_broadcast_to_six_stacks():
    cfg = ZipformerConfig(query_head_dim=24, num_heads="4")
    assert cfg.query_head_dim == (24,) * 6 and cfg.num_heads == (4,) * 6


@pytest.mark.parametrize("changes, field", [
    (dict(num_encoder_layers=(2, 2, 2)), "num_encoder_layers"),
    (dict(encoder_dim=(192, 256, 384, 512, 384, 0)), "encoder_dim"),
    (dict(downsampling_factor=(1, 2, 3, 8, 4, 2)), "downsampling_factor"),
    (dict(encoder_unmasked_dim=(256, 192, 256, 256, 256, 192)), "encoder_unmasked_dim"),
    (dict(cnn_module_kernel=(30, 31, 15, 15, 15, 31)), "cnn_module_kernel"),
    (dict(encoder_dim=(190, 256, 384, 512, 384, 256), encoder_unmasked_dim=(190, 192, 256, 256, 256, 192)),
     "encoder_dim"),
    (dict(feedforward_dim=(510, 768, 1024, 1536, 1024, 768)), "feedforward_dim"),
    (dict(pos_dim=47), "pos_dim"),
    (dict(output_downsampling_factor=4), "output_downsampling_factor"),
    (dict(feature_dim=40), "feature_dim"),
    (dict(decoder_dim=510), "decoder_dim"),
    (dict(context_size=0), "context_size"),
    (dict(vocab_size=1), "vocab_size"),
    (dict(chunk_size=(16, -1)), "chunk_size"),
    (dict(causal=True, chunk_size=(12, -1)), "chunk_size"),
])
def test_invalid_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        ZipformerConfig(**changes)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        ZipformerConfig.preset("XXL")
