"""Decode test sets with a trained checkpoint (or an average) and report the WER.

    python -m recipes.decode --exp-dir exp/synthetic --manifest-dir data/synthetic/manifests \
        --bpe-model data/synthetic/lang/bpe.model --splits test --decoding-method modified_beam_search \
        --iter 0 --avg 4        # newest checkpoint-*.pt, averaged over the last 4 save intervals
    python -m recipes.decode --exp-dir exp/mine --bpe-model bpe.model --test-cuts my_test.jsonl.gz ...

Which model: --checkpoint PATH (its model, or with --avg-from PATH the icefall average between two
checkpoints), --epoch E --avg A (epoch files), or --iter B --avg A (step files; B = 0 means the
newest). With --use-averaged-model 1 (icefall's default) the average comes from the float64
running averages (icefall checkpoint.py average_checkpoints_with_averaged_model); with 0 the A+1 ... checkpoints' models are averaged plainly.
Writes <res-dir>/recogs-<split>-<method>.txt (id, ref, hyp), errs-<split>-<method>.txt
(per-utterance alignments, then the totals) and wer-<split>-<method>.json.

Methods: greedy_search, modified_beam_search (transducer); ctc_greedy_search,
ctc_prefix_beam_search (CTC); ctc_prefix_beam_search_attention_decoder_rescoring and
modified_beam_search_attention_decoder_rescoring (an n-best of --beam-size from CTC or the
transducer, rescored with the attention decoder: first-pass + scale * AED log-prob). Rescoring
writes one result per --attention-scales value, named <method>-attention_scale_<a>.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from recipes.lib import checkpoint as ckpt_io
from recipes.lib.averaging import average_between, average_state_dicts
from recipes.lib.dist import resolve_device
from recipes.lib.model_factory import model_from_checkpoint_params
from recipes.lib.options import str2bool
from zipformer_fast.asr import DECODING_METHODS, RESCORING_METHODS

log = logging.getLogger("decode")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-dir", required=True)
    p.add_argument("--manifest-dir", default=None, help="a recipe's prepared data (cuts_<split>.jsonl.gz)")
    p.add_argument("--bpe-model", required=True)
    p.add_argument("--splits", nargs="+", default=["test"], help="splits of --manifest-dir to decode")
    p.add_argument("--test-cuts", nargs="+", default=None,
                   help="your own lhotse cut manifests to decode instead (Fbank on the fly when they have "
                        "none); results are named after the file: cuts_foo.jsonl.gz -> foo")
    p.add_argument("--checkpoint", default=None, help="a checkpoint file (overrides --epoch/--iter)")
    p.add_argument("--avg-from", default=None, help="with --checkpoint: average since this checkpoint")
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--iter", type=int, default=0, help="step checkpoint to use; 0 = newest")
    p.add_argument("--avg", type=int, default=1, help="number of checkpoints (intervals) to average")
    p.add_argument("--use-averaged-model", type=str2bool, default=True)
    p.add_argument("--decoding-method", default="modified_beam_search", choices=list(DECODING_METHODS))
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--attention-scales", type=float, nargs="+", default=[1.0],
                   help="attention-decoder rescoring: weight(s) of the AED log-prob")
    p.add_argument("--max-duration", type=float, default=300.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "reference"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--compile", type=str2bool, default=False,
                   help="torch.compile the encoder (fullgraph, dynamic shapes; input checks stay eager)")
    p.add_argument("--compile-backend", default="inductor", help="with --compile: torch.compile backend")
    p.add_argument("--cuda-graphs", type=str2bool, default=False,
                   help="offline decoding on CUDA: pad batches to (power-of-two batch, multiple of "
                        "--graph-frame-step frames) buckets and replay one captured CUDA graph of the encoder "
                        "per bucket (zipformer_fast.asr.graphed_encoder)")
    p.add_argument("--graph-frame-step", type=int, default=200, help="with --cuda-graphs: frame bucket size")
    p.add_argument("--res-dir", default=None, help="default: <exp-dir>/<decoding-method>[-chunk/streaming suffix]")
    g = p.add_argument_group("causal models (trained with --causal 1)")
    g.add_argument("--chunk-size", type=int, default=None,
                   help="chunk size at 50 Hz (one the model was trained with); -1 or unset: full context")
    g.add_argument("--left-context-frames", type=int, default=None,
                   help="left context at 50 Hz (one the model was trained with); with --chunk-size")
    g.add_argument("--streaming", type=str2bool, default=False,
                   help="real streaming (chunk by chunk with cached states, zipformer_fast.asr.streaming); "
                        "without it a causal model is decoded by simulated streaming (whole utterance, chunk mask)")
    g.add_argument("--num-decode-streams", type=int, default=200, help="with --streaming: concurrent streams")
    return p


def configure_chunking(model, args) -> str:
    """Fix a causal model's chunk size / left context for decoding (icefall builds the model with one
    value of each); returns the results-directory suffix."""
    if not model.config.causal:
        if args.chunk_size not in (None, -1) or args.streaming:
            raise ValueError("--chunk-size / --streaming need a causal model (trained with --causal 1)")
        return ""
    if args.chunk_size in (None, -1):
        if args.streaming:
            raise ValueError("--streaming needs --chunk-size and --left-context-frames")
        model.encoder.chunk_size, model.encoder.left_context_frames = [-1], [-1]  # full context
        return "-full-context"
    if args.left_context_frames is None:
        raise ValueError("--chunk-size needs --left-context-frames")
    model.encoder.configure_streaming(args.chunk_size, args.left_context_frames)
    suffix = f"-chunk{args.chunk_size}-left{args.left_context_frames}"
    return ("-streaming" if args.streaming else "-simulated") + suffix


def _pick_checkpoints(args) -> (dict, dict):
    """(start checkpoint or None, end checkpoint) for averaging, following icefall's conventions."""
    exp = Path(args.exp_dir)
    if args.checkpoint:
        return (ckpt_io.load(args.avg_from) if args.avg_from else None), ckpt_io.load(args.checkpoint)
    if args.epoch > 0:
        end = ckpt_io.load(ckpt_io.epoch_checkpoint(exp, args.epoch))
        start_epoch = args.epoch - args.avg
        start = ckpt_io.load(ckpt_io.epoch_checkpoint(exp, start_epoch)) if start_epoch > 0 else None
        return start, end
    steps = ckpt_io.step_checkpoints(exp)
    if args.iter > 0:
        steps = [p for p in steps if int(p.stem.split("-")[1]) <= args.iter]
    if not steps:
        raise FileNotFoundError(f"no checkpoint-*.pt in {exp}" + (f" at or before step {args.iter}" if args.iter else ""))
    end = ckpt_io.load(steps[0])
    start = ckpt_io.load(steps[args.avg]) if len(steps) > args.avg else None  # None: since step 0
    return start, end


def load_model(args):
    """Build the trained model and load the requested (averaged) weights."""
    start, end = _pick_checkpoints(args)
    model, _ = model_from_checkpoint_params(end["params"])
    if args.use_averaged_model and end.get("model_avg") is not None:
        state = average_between(start, end)
        how = f"running average, steps {start['params']['batch_idx_train'] if start else 0}-{end['params']['batch_idx_train']}"
    elif args.avg > 1 and not args.checkpoint:
        exp = Path(args.exp_dir)
        if args.epoch > 0:
            paths = [ckpt_io.epoch_checkpoint(exp, e) for e in range(args.epoch - args.avg + 1, args.epoch + 1)]
        else:
            paths = [p for p in ckpt_io.step_checkpoints(exp)
                     if args.iter == 0 or int(p.stem.split("-")[1]) <= args.iter][:args.avg]
        state = average_state_dicts([ckpt_io.load(p)["model"] for p in paths])
        how = f"plain average of {len(paths)} checkpoints"
    else:
        state = end["model"]
        how = "checkpoint weights"
    ref = model.state_dict()
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in state.items()})
    log.info("model at step %d (%s)", end["params"]["batch_idx_train"], how)
    return model.eval(), end["params"]


def result_names(args) -> List[str]:
    """One name per result set: the method, or one per attention scale when rescoring."""
    if args.decoding_method in RESCORING_METHODS:
        return [f"{args.decoding_method}-attention_scale_{a:g}" for a in args.attention_scales]
    return [args.decoding_method]


def decode_batch(model, enc, enc_lens, args) -> Dict[str, List[List[int]]]:
    from zipformer_fast.asr import decode, decode_rescored
    if args.decoding_method in RESCORING_METHODS:
        by_scale = decode_rescored(model, enc, enc_lens, args.decoding_method, beam=args.beam_size,
                                   attention_scales=args.attention_scales)
        return dict(zip(result_names(args), (by_scale[float(a)] for a in args.attention_scales)))
    return {args.decoding_method: decode(model, enc, enc_lens, method=args.decoding_method,
                                         beam=args.beam_size)}


@torch.no_grad()
def decode_split_all(model, cuts, tokenizer, args, device) -> Dict[str, List[Dict]]:
    """{result name: rows sorted by id}."""
    from zipformer_fast.data import AsrDataModule, DataConfig, batch_inputs
    dl = AsrDataModule(DataConfig(max_duration=args.max_duration, num_workers=0)).eval_dataloader(cuts)
    rows: Dict[str, List[Dict]] = {name: [] for name in result_names(args)}
    encoder = model.forward_encoder
    if args.cuda_graphs:
        from zipformer_fast.asr import GraphedEncoder
        encoder = GraphedEncoder(model, frame_step=args.graph_frame_step)
    for batch in dl:
        feats, lens, texts, ids = batch_inputs(batch, device)
        enc, enc_lens = encoder(feats, lens)
        for name, hyps in decode_batch(model, enc, enc_lens, args).items():
            for uid, ref, hyp in zip(ids, texts, hyps):
                rows[name].append({"id": uid, "ref": ref, "hyp": tokenizer.decode(hyp)})
    return {name: sorted(r, key=lambda r: r["id"]) for name, r in rows.items()}


def check_method(method: str, params: dict) -> None:
    """SystemExit when the trained model lacks the head a decoding method needs."""
    needs_ctc = method.startswith("ctc_")
    needs_transducer = method in ("greedy_search", "modified_beam_search",
                                  "modified_beam_search_attention_decoder_rescoring")
    if needs_ctc and not params["use_ctc"]:
        raise SystemExit(f"error: {method} needs a model trained with --use-ctc 1")
    if needs_transducer and not params["use_transducer"]:
        raise SystemExit(f"error: this model has no transducer; {method} needs one (try ctc_greedy_search)")
    if method in RESCORING_METHODS and not params.get("use_attention_decoder", False):
        raise SystemExit(f"error: {method} needs a model trained with --use-attention-decoder 1")


@torch.no_grad()
def decode_split_streaming(model, cuts, tokenizer, args, device) -> (List[Dict], dict):
    """Real streaming: every utterance is a Stream; up to --num-decode-streams are stepped together
    (icefall streaming_decode.py's loop). Returns the rows and timing (audio seconds, decode seconds)."""
    from zipformer_fast.asr import StreamingRecognizer
    from zipformer_fast.data import AsrDataModule, DataConfig, batch_inputs
    rec = StreamingRecognizer(model, args.chunk_size, args.left_context_frames, args.decoding_method,
                              beam=args.beam_size)
    dl = AsrDataModule(DataConfig(max_duration=args.max_duration, num_workers=0)).eval_dataloader(cuts)
    rows, active, refs, audio_s, compute_s = [], [], {}, 0.0, 0.0

    def step():
        nonlocal compute_s
        t0 = time.perf_counter()
        finished = rec.step(active)
        compute_s += time.perf_counter() - t0
        for s in finished:
            active.remove(s)
            rows.append({"id": s.id, "ref": refs.pop(s.id), "hyp": tokenizer.decode(s.tokens)})

    for batch in dl:
        feats, lens, texts, ids = batch_inputs(batch, "cpu")
        for f, n, text, uid in zip(feats, lens.tolist(), texts, ids):
            refs[uid] = text
            s = rec.create_stream(uid)
            s.accept_features(f[:n])
            s.input_finished()
            audio_s += n * 0.01  # 10 ms frame shift
            active.append(s)
            while len(active) >= args.num_decode_streams:
                step()
    while active:
        step()
    timing = {"audio_seconds": round(audio_s, 2), "decode_seconds": round(compute_s, 2),
              "rtf": round(compute_s / max(audio_s, 1e-9), 4), "num_decode_streams": args.num_decode_streams,
              "threads": torch.get_num_threads()}
    return sorted(rows, key=lambda r: r["id"]), timing


def write_results(rows, res_dir: Path, split: str, method: str) -> dict:
    from zipformer_fast.asr import error_rate, per_utterance_errors
    res_dir.mkdir(parents=True, exist_ok=True)
    refs, hyps, ids = [r["ref"] for r in rows], [r["hyp"] for r in rows], [r["id"] for r in rows]
    stats = error_rate(refs, hyps)
    with open(res_dir / f"recogs-{split}-{method}.txt", "w") as f:
        for r in rows:
            f.write(f"{r['id']}:\tref={r['ref']}\n{r['id']}:\thyp={r['hyp']}\n")
    per_utt = per_utterance_errors(refs, hyps, ids)
    with open(res_dir / f"errs-{split}-{method}.txt", "w") as f:
        for u in per_utt:
            if u["errors"]:
                f.write(f"{u['id']}: {u['aligned']}\n")
        f.write(f"\n%WER {100 * stats.rate:.2f} [ {stats.errors} / {stats.ref_len}, {stats.ins} ins, "
                f"{stats.dele} del, {stats.sub} sub ]\n")
    result = {"split": split, "method": method, "wer": 100 * stats.rate, "errors": stats.errors,
              "words": stats.ref_len, "ins": stats.ins, "del": stats.dele, "sub": stats.sub,
              "utterances": len(rows), "utterances_with_errors": sum(1 for u in per_utt if u["errors"])}
    (res_dir / f"wer-{split}-{method}.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> Dict[str, dict]:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.manifest_dir and not args.test_cuts:
        raise SystemExit("error: give --manifest-dir (with --splits) or --test-cuts")
    try:
        from recipes.lib.cut_sources import test_sets
        from zipformer_fast import use_backend
        from zipformer_fast.data import Tokenizer
        device = resolve_device(args.device)
        tokenizer = Tokenizer(args.bpe_model)
        model, params = load_model(args)
        check_method(args.decoding_method, params)
        model.to(device)
        suffix = configure_chunking(model, args)
        if args.compile:
            model.compile_encoder(backend=args.compile_backend)
        if args.cuda_graphs and (device.type != "cuda" or args.streaming):
            raise ValueError("--cuda-graphs needs a CUDA device and offline decoding (not --streaming)")
        if args.streaming and args.decoding_method not in ("greedy_search", "modified_beam_search"):
            raise ValueError("--streaming decodes with the transducer (greedy_search or modified_beam_search)")
        res_dir = Path(args.res_dir) if args.res_dir else Path(args.exp_dir) / (args.decoding_method + suffix)
        results = {}
        for split, cuts in test_sets(args):
            t0 = time.time()
            with use_backend(args.backend):
                if args.streaming:
                    rows, timing = decode_split_streaming(model, cuts, tokenizer, args, device)
                    all_rows = {args.decoding_method: rows}
                else:
                    all_rows, timing = decode_split_all(model, cuts, tokenizer, args, device), {}
            seconds = round(time.time() - t0, 1)
            for i, (name, rows) in enumerate(all_rows.items()):
                r = write_results(rows, res_dir, split, name)
                r["seconds"] = seconds
                if model.config.causal:
                    r.update(chunk_size=model.encoder.chunk_size[0],
                             left_context_frames=model.encoder.left_context_frames[0],
                             streaming=bool(args.streaming), **timing)
                    (res_dir / f"wer-{split}-{name}.json").write_text(json.dumps(r, indent=1))
                if i == 0:  # results[split]: the method's (first) result set, as before rescoring existed
                    results[split] = r
                if name != args.decoding_method:  # rescoring: every scale under "<split>/<name>"
                    results[f"{split}/{name}"] = r
                print(f"{split} {name}: WER {r['wer']:.2f}% [{r['errors']} / {r['words']}, "
                      f"{r['ins']} ins, {r['del']} del, {r['sub']} sub] ({r['utterances']} utterances, "
                      f"{r['seconds']}s{', RTF %.3f' % r['rtf'] if 'rtf' in r else ''}) -> {res_dir}", flush=True)
    except (FileNotFoundError, ImportError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    return results


if __name__ == "__main__":
    main()
