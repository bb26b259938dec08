"""CTC prefix beam search and attention-decoder rescoring of n-best lists.

ctc_prefix_beam_search (icefall icefall/decode.py `ctc_prefix_beam_search`, after Graves et al.
2006): each hypothesis is a label prefix with two log-probabilities, of all alignments of the
frames so far that end in blank (pb) and in the prefix's last label (pnb). Per frame only the
`beam` most likely tokens are expanded, equal prefixes are merged by log-add, and the `beam`
prefixes with the largest log(exp(pb) + exp(pnb)) survive. The result is the n-best list
[(tokens, log P(tokens | x) over the kept alignments)], best first.

attention_rescore (icefall `ctc_prefix_beam_search_attention_decoder_rescoring`): each n-best
entry gets first_pass_score + attention_scale * log P_aed(tokens + [eos] | encoder_out), and the
best per utterance wins. The n-best may come from CTC (above) or from the transducer
(search.modified_beam_search(..., return_nbest=True)). A hypothesis containing the sos/eos id (a
CTC or transducer head can emit the <sos/eos> piece, which the attention decoder cannot score)
gets an attention score of -inf; an utterance whose hypotheses all contain it keeps its
first-pass best.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

NBest = List[Tuple[List[int], float]]

_NEG_INF = -math.inf


def _log_add(a: float, b: float) -> float:
    if a == _NEG_INF:
        return b
    if b == _NEG_INF:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def _check(log_probs: Tensor, lens: Tensor) -> List[int]:
    if log_probs.ndim != 3 or lens.shape != (log_probs.shape[0],):
        raise ValueError(f"expected (B, T, V) log-probs and (B,) lengths, got {tuple(log_probs.shape)} "
                         f"and {tuple(lens.shape)}")
    out = lens.tolist()
    if any(n < 0 or n > log_probs.shape[1] for n in out):
        raise ValueError(f"lengths {out} outside [0, T={log_probs.shape[1]}]")
    return out


@torch.no_grad()
def ctc_prefix_beam_search_nbest(ctc_log_probs: Tensor, lens: Tensor, beam: int = 4,
                                 blank: int = 0) -> List[NBest]:
    """(B, T, V) CTC log-probs + (B,) lengths -> per utterance up to `beam` (tokens, log-prob)
    pairs, best first."""
    if beam < 1:
        raise ValueError(f"beam={beam} must be >= 1")
    lens_list = _check(ctc_log_probs, lens)
    k = min(beam, ctc_log_probs.shape[2])
    x = ctc_log_probs if ctc_log_probs.dtype == torch.float64 else ctc_log_probs.float()
    values, indices = x.topk(k, dim=-1)  # (B, T, k)
    values, indices = values.cpu().tolist(), indices.cpu().tolist()
    results: List[NBest] = []
    for b, n in enumerate(lens_list):
        # prefix -> [log P(ending in blank), log P(ending in the last label)]
        hyps: Dict[Tuple[int, ...], List[float]] = {(): [0.0, _NEG_INF]}
        for t in range(n):
            new: Dict[Tuple[int, ...], List[float]] = {}
            for prefix, (pb, pnb) in hyps.items():
                total = _log_add(pb, pnb)
                for lp, tok in zip(values[b][t], indices[b][t]):
                    if tok == blank:
                        e = new.setdefault(prefix, [_NEG_INF, _NEG_INF])
                        e[0] = _log_add(e[0], total + lp)
                    elif prefix and prefix[-1] == tok:
                        # "a" + "a" stays "a" (no blank between); "a-" + "a" becomes "aa".
                        e = new.setdefault(prefix, [_NEG_INF, _NEG_INF])
                        e[1] = _log_add(e[1], pnb + lp)
                        e = new.setdefault(prefix + (tok,), [_NEG_INF, _NEG_INF])
                        e[1] = _log_add(e[1], pb + lp)
                    else:
                        e = new.setdefault(prefix + (tok,), [_NEG_INF, _NEG_INF])
                        e[1] = _log_add(e[1], total + lp)
            # Prefixes reached only through impossible paths (e.g. "aa" without a blank) are dropped.
            ranked = sorted(((p, s) for p, s in new.items() if _log_add(*s) > _NEG_INF),
                            key=lambda kv: -_log_add(*kv[1]))
            hyps = dict(ranked[:beam])
        ranked = sorted(((list(p), _log_add(*s)) for p, s in hyps.items()), key=lambda r: -r[1])
        results.append(ranked)
    return results


def ctc_prefix_beam_search(ctc_log_probs: Tensor, lens: Tensor, beam: int = 4,
                           blank: int = 0) -> List[List[int]]:
    """The best hypothesis of ctc_prefix_beam_search_nbest per utterance."""
    return [nbest[0][0] for nbest in ctc_prefix_beam_search_nbest(ctc_log_probs, lens, beam, blank)]


@torch.no_grad()
def attention_scores(attention_decoder, encoder_out: Tensor, encoder_out_lens: Tensor,
                     nbest: Sequence[NBest]) -> List[List[float]]:
    """log P_aed(tokens + [eos] | encoder_out) for every n-best entry (-inf where the tokens
    contain the sos/eos id)."""
    if len(nbest) != encoder_out.shape[0]:
        raise ValueError(f"{len(nbest)} n-best lists for a batch of {encoder_out.shape[0]}")
    special = {attention_decoder.sos_id, attention_decoder.eos_id}
    rows, seqs = [], []
    for b, hyps in enumerate(nbest):
        for ys, _ in hyps:
            if not special.intersection(ys):
                rows.append(b)
                seqs.append(list(ys))
    scores = []
    if seqs:
        idx = torch.tensor(rows, device=encoder_out.device)
        nll = attention_decoder.nll(encoder_out.index_select(0, idx), encoder_out_lens.index_select(0, idx), seqs)
        scores = (-nll.sum(dim=1)).tolist()
    out, i = [], 0
    for hyps in nbest:
        row = []
        for ys, _ in hyps:
            if special.intersection(ys):
                row.append(_NEG_INF)
            else:
                row.append(scores[i])
                i += 1
        out.append(row)
    return out


def attention_rescore(attention_decoder, encoder_out: Tensor, encoder_out_lens: Tensor,
                      nbest: Sequence[NBest], attention_scales: Sequence[float] = (1.0,)
                      ) -> Dict[float, List[List[int]]]:
    """-> {scale: best hypothesis per utterance by first-pass + scale * attention score}."""
    aed = attention_scores(attention_decoder, encoder_out, encoder_out_lens, nbest)
    result: Dict[float, List[List[int]]] = {}
    for scale in attention_scales:
        best = []
        for hyps, scores in zip(nbest, aed):
            if not hyps:
                best.append([])
                continue
            totals = [first + (scale * a if scale else 0.0) for (_, first), a in zip(hyps, scores)]
            j = max(range(len(hyps)), key=lambda i: totals[i])
            if totals[j] == _NEG_INF:  # every hypothesis holds sos/eos: keep the first-pass best
                j = max(range(len(hyps)), key=lambda i: hyps[i][1])
            best.append(list(hyps[j][0]))
        result[float(scale)] = best
    return result
