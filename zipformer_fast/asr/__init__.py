"""The ASR model around the Zipformer encoder and everything to train and decode it, as one
public namespace:

- model: `AsrModel` (encoder + transducer / CTC / attention-decoder heads; `forward(x, x_lens, y)`
  returns `AsrLosses` as icefall's AsrModel.forward), `Decoder`, `Joiner`, `AttentionDecoderModel`.
- losses: the pruned transducer loss and its k2-compatible parts, CTC, CR-CTC, the attention
  decoder's label-smoothed loss, icefall's loss weights (`LossWeights`).
- searches: transducer greedy and modified beam search, CTC greedy and prefix beam search,
  attention-decoder rescoring, `decode` by method name; `StreamingRecognizer` for causal models;
  `GraphedEncoder` (offline encoding replayed from one CUDA graph per batch-shape bucket).
- WER: `error_rate` and friends.

Names are imported on first use (torch only, transducer_loss at once; lhotse is needed only by CrCtcAugment / time_warp).
"""
from .._lazy import lazy_dir, lazy_exports
# The function shares its submodule's name: imported now, so that the name is bound to the function
# once the submodule is loaded (a later import of the submodule does not rebind it).
from .transducer_loss import transducer_loss

_EXPORTS = {
    # model and heads
    "AsrModel": "model", "Decoder": "decoder", "Joiner": "joiner",
    "AttentionDecoderConfig": "attention_decoder", "AttentionDecoderModel": "attention_decoder",
    # losses
    "AsrLosses": "losses",
    # k2's names; the unpruned full-joint loss stays zipformer_fast.asr.rnnt_loss.rnnt_loss (its
    # module's name) and compat.k2.rnnt_loss.
    "rnnt_loss_simple": "rnnt_loss", "rnnt_loss_smoothed": "rnnt_loss",
    "rnnt_loss_pruned": "rnnt_loss", "get_rnnt_prune_ranges": "rnnt_loss", "do_rnnt_pruning": "rnnt_loss",
    "mutual_information_recursion": "rnnt_loss",  # defined in ops.mutual_information
    "ctc_loss": "ctc",
    "cr_ctc_loss": "cr_ctc", "consistency_loss": "cr_ctc", "CrCtcAugment": "cr_ctc", "time_warp": "cr_ctc",
    "label_smoothing_loss": "attention_decoder",
    "LossWeights": "loss_weights", "check_ctc_aed_scales": "loss_weights",
    "transducer_loss_scales": "loss_weights",
    "pad_targets": "targets",
    # searches
    "decode": "search", "decode_rescored": "search", "DECODING_METHODS": "search",
    "RESCORING_METHODS": "search", "greedy_search_batch": "search", "modified_beam_search": "search",
    "ctc_greedy_search": "search",
    "ctc_prefix_beam_search": "ctc_prefix_search", "ctc_prefix_beam_search_nbest": "ctc_prefix_search",
    "attention_rescore": "ctc_prefix_search",
    # streaming
    "StreamingRecognizer": "streaming", "Stream": "streaming", "GraphedEncoder": "graphed_encoder",
    "LOOKAHEAD_FRAMES": "streaming_encoder", "stack_states": "streaming_encoder",
    "unstack_states": "streaming_encoder",
    # WER
    "error_rate": "wer", "word_error_rate": "wer", "char_error_rate": "wer",
    "per_utterance_errors": "wer", "align": "wer", "ErrorStats": "wer",
}

__all__ = ["transducer_loss", *_EXPORTS]
__getattr__ = lazy_exports(__name__, _EXPORTS)
__dir__ = lazy_dir(__name__, _EXPORTS)
