"""Decoding from encoder output (B, T, E) + lengths, as icefall's beam_search.py:

- greedy_search_batch: transducer greedy, at most one symbol per frame, batched over utterances.
- modified_beam_search: transducer beam search, at most one symbol per frame; per utterance the
  global top-`beam` (hypothesis, token) pairs survive each frame, and hypotheses with the same
  label sequence are merged by log-add of their probabilities. Final pick: best log_prob / len(ys)
  (icefall's length normalisation, len counting the context placeholders) unless length_norm=False.
- ctc_greedy_search: argmax per frame, collapse repeats, drop blanks.

The transducer searches use the model's icefall-named modules: decoder(y (N, context_size),
need_pad=False) with .context_size/.blank_id, joiner.encoder_proj / joiner.decoder_proj and
joiner(enc, dec, project_input=False). The decoder context starts as [-1]*(c-1) + [blank]
(a zero embedding + blank, matching the zero left-pad used in training). Outputs are lists of
token ids (blank and the context prefix stripped).
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple, Union

import torch
from torch import Tensor


def _check(encoder_out: Tensor, encoder_out_lens: Tensor) -> List[int]:
    if encoder_out.ndim != 3:
        raise ValueError(f"encoder_out must be (B, T, E), got {tuple(encoder_out.shape)}")
    if encoder_out_lens.shape != (encoder_out.shape[0],):
        raise ValueError(f"encoder_out_lens must be (B,), got {tuple(encoder_out_lens.shape)}")
    lens = encoder_out_lens.tolist()
    if any(n < 0 or n > encoder_out.shape[1] for n in lens):
        raise ValueError(f"encoder_out_lens {lens} outside [0, T={encoder_out.shape[1]}]")
    return lens


def _decoder_out(model, contexts: List[List[int]], device) -> Tensor:
    """Projected decoder output for the last context_size tokens of each hypothesis: (N, 1, J)."""
    y = torch.tensor(contexts, dtype=torch.int64, device=device)
    return model.joiner.decoder_proj(model.decoder(y, need_pad=False))


def _joiner_logits(model, enc: Tensor, dec: Tensor) -> Tensor:
    """enc (N, J) projected frames, dec (N, 1, J) projected contexts -> logits (N, V)."""
    return model.joiner(enc[:, None, None, :], dec[:, None, :, :], project_input=False)[:, 0, 0, :]


def _upcast(x: Tensor) -> Tensor:
    # Scores are accumulated in fp32 at least (fp64 inputs stay fp64).
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _skip_ids(model) -> Tuple[int, ...]:
    blank = model.decoder.blank_id
    # icefall treats blank and model.unk_id (defaulting to blank) as "no emission".
    return (blank, getattr(model, "unk_id", blank))


@torch.no_grad()
def greedy_search_batch(model, encoder_out: Tensor, encoder_out_lens: Tensor,
                        blank_penalty: float = 0.0, return_scores: bool = False
                        ) -> Union[List[List[int]], Tuple[List[List[int]], List[float]]]:
    """Batched greedy search, max one symbol per frame. With return_scores, also the log-prob of
    the chosen alignment (sum over frames of log_softmax of the picked label)."""
    lens = _check(encoder_out, encoder_out_lens)
    B = len(lens)
    c, blank = model.decoder.context_size, model.decoder.blank_id
    skip = _skip_ids(model)
    device = encoder_out.device
    # Longest first, so the active utterances at frame t are a prefix (icefall packs the same way).
    order = sorted(range(B), key=lambda b: -lens[b])
    sorted_lens = [lens[b] for b in order]
    enc = model.joiner.encoder_proj(encoder_out[order])  # (B, T, J)
    hyps = [[-1] * (c - 1) + [blank] for _ in range(B)]
    scores = [0.0] * B
    dec = _decoder_out(model, [h[-c:] for h in hyps], device) if B else None
    for t in range(sorted_lens[0] if B else 0):
        n = sum(1 for L in sorted_lens if L > t)
        logits = _joiner_logits(model, enc[:n, t], dec[:n])
        if blank_penalty != 0.0:
            logits[:, blank] -= blank_penalty
        best = logits.argmax(dim=1)
        if return_scores:
            lp = torch.log_softmax(_upcast(logits), dim=1).gather(1, best[:, None])[:, 0]
            for i, v in enumerate(lp.tolist()):
                scores[i] += v
        emitted = False
        for i, v in enumerate(best.tolist()):
            if v not in skip:
                hyps[i].append(v)
                emitted = True
        if emitted:
            dec = _decoder_out(model, [h[-c:] for h in hyps[:n]], device)
    out: List[List[int]] = [[] for _ in range(B)]
    out_scores = [0.0] * B
    for i, b in enumerate(order):
        out[b] = hyps[i][c:]
        out_scores[b] = scores[i]
    return (out, out_scores) if return_scores else out


def _log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


Beam = Dict[Tuple[int, ...], float]  # label sequence (with the context prefix) -> log-prob, insertion-ordered


def initial_beam(model) -> Beam:
    """One empty hypothesis: the decoder context [-1]*(c-1) + [blank] with log-prob 0."""
    return {tuple([-1] * (model.decoder.context_size - 1) + [model.decoder.blank_id]): 0.0}


@torch.no_grad()
def beam_search_frame(model, enc: Tensor, beams: List[Beam], beam: int, temperature: float = 1.0,
                      blank_penalty: float = 0.0) -> List[Beam]:
    """One frame of modified beam search for N utterances: enc (N, J) projected encoder frames, one
    beam per utterance -> the N new beams (top `beam` (hypothesis, token) pairs of each, equal label
    sequences merged by log-add)."""
    c, blank = model.decoder.context_size, model.decoder.blank_id
    skip = _skip_ids(model)
    device = enc.device
    flat = [(b, ys, lp) for b, hyps in enumerate(beams) for ys, lp in hyps.items()]
    dec = _decoder_out(model, [list(ys[-c:]) for _, ys, _ in flat], device)  # (H, 1, J)
    rows = torch.tensor([b for b, _, _ in flat], device=device)
    logits = _upcast(_joiner_logits(model, enc[rows], dec))  # (H, V)
    if blank_penalty != 0.0:
        logits[:, blank] -= blank_penalty
    V = logits.shape[1]
    log_probs = torch.log_softmax(logits / temperature, dim=1)
    log_probs += torch.tensor([lp for _, _, lp in flat], device=device, dtype=log_probs.dtype).unsqueeze(1)
    out, start = [], 0
    for hyps in beams:
        n_hyp = len(hyps)
        scores = log_probs[start:start + n_hyp].reshape(-1)
        top = torch.topk(scores, min(beam, scores.numel()))
        new: Beam = {}
        for value, idx in zip(top.values.tolist(), top.indices.tolist()):
            ys = flat[start + idx // V][1]
            token = idx % V
            if token not in skip:
                ys = ys + (token,)
            new[ys] = _log_add(new.get(ys, -math.inf), value)
        out.append(new)
        start += n_hyp
    return out


def best_hypothesis(beam: Beam, length_norm: bool = True) -> Tuple[Tuple[int, ...], float]:
    """(label sequence with context prefix, log-prob) of the best hypothesis: highest log_prob / len(ys)
    (icefall's length normalisation) or highest log_prob."""
    key = (lambda kv: kv[1] / len(kv[0])) if length_norm else (lambda kv: kv[1])
    return max(beam.items(), key=key)


@torch.no_grad()
def modified_beam_search(model, encoder_out: Tensor, encoder_out_lens: Tensor, beam: int = 4,
                         temperature: float = 1.0, blank_penalty: float = 0.0,
                         length_norm: bool = True, return_scores: bool = False
                         ) -> Union[List[List[int]], Tuple[List[List[int]], List[float]]]:
    """Beam search with at most one symbol per frame and merging of equal label sequences.
    With return_scores, also the (merged, unnormalised) log-prob of each chosen hypothesis."""
    if beam < 1:
        raise ValueError(f"beam={beam} must be >= 1")
    lens = _check(encoder_out, encoder_out_lens)
    B = len(lens)
    enc = model.joiner.encoder_proj(encoder_out)  # (B, T, J)
    beams = [initial_beam(model) for _ in range(B)]
    for t in range(max(lens, default=0)):
        active = [b for b in range(B) if lens[b] > t]
        new_beams = beam_search_frame(model, enc[active, t], [beams[b] for b in active], beam,
                                      temperature=temperature, blank_penalty=blank_penalty)
        for b, new in zip(active, new_beams):
            beams[b] = new
    c = model.decoder.context_size
    out, out_scores = [], []
    for b in range(B):
        ys, lp = best_hypothesis(beams[b], length_norm)
        out.append(list(ys[c:]))
        out_scores.append(lp)
    return (out, out_scores) if return_scores else out


@torch.no_grad()
def ctc_greedy_search(ctc_log_probs: Tensor, lens: Tensor, blank: int = 0) -> List[List[int]]:
    """(B, T, V) CTC log-probs (or logits) + lens -> argmax path with repeats collapsed and
    blanks removed."""
    if ctc_log_probs.ndim != 3 or lens.shape != (ctc_log_probs.shape[0],):
        raise ValueError(f"expected (B, T, V) and (B,), got {tuple(ctc_log_probs.shape)} and "
                         f"{tuple(lens.shape)}")
    best = ctc_log_probs.argmax(dim=-1)  # (B, T)
    # Keep a frame when it differs from the previous frame and is not blank.
    changed = torch.ones_like(best, dtype=torch.bool)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = changed & (best != blank)
    keep &= torch.arange(best.shape[1], device=best.device).unsqueeze(0) < lens.to(best.device).unsqueeze(1)
    return [row[k].tolist() for row, k in zip(best, keep)]


def decode(model, encoder_out: Tensor, encoder_out_lens: Tensor,
           method: str = "greedy_search", beam: int = 4) -> List[List[int]]:
    """Dispatch by icefall's --decoding-method name."""
    if method == "greedy_search":
        return greedy_search_batch(model, encoder_out, encoder_out_lens)
    if method == "modified_beam_search":
        return modified_beam_search(model, encoder_out, encoder_out_lens, beam=beam)
    if method == "ctc_greedy_search":
        return ctc_greedy_search(model.ctc_output(encoder_out), encoder_out_lens,
                                 blank=getattr(getattr(model, "decoder", None), "blank_id", 0))
    raise ValueError(f"decoding method {method!r}: expected greedy_search, modified_beam_search "
                     f"or ctc_greedy_search")
