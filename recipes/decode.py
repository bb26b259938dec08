"""Decode test sets with a trained checkpoint (or an average) and report the WER.

    python -m recipes.decode --exp-dir exp/synthetic --manifest-dir data/synthetic/manifests \
        --bpe-model data/synthetic/lang/bpe.model --splits test --decoding-method modified_beam_search \
        --iter 0 --avg 4        # newest checkpoint-*.pt, averaged over the last 4 save intervals

Which model: --checkpoint PATH (its model, or with --avg-from PATH the icefall average between two
checkpoints), --epoch E --avg A (epoch files), or --iter B --avg A (step files; B = 0 means the
newest). With --use-averaged-model 1 (icefall's default) the average comes from the float64
running averages (spec 10.4); with 0 the A+1 ... checkpoints' models are averaged plainly.
Writes <res-dir>/recogs-<split>-<method>.txt (id, ref, hyp), errs-<split>-<method>.txt
(per-utterance alignments, then the totals) and wer-<split>-<method>.json.
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

log = logging.getLogger("decode")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-dir", required=True)
    p.add_argument("--manifest-dir", required=True)
    p.add_argument("--bpe-model", required=True)
    p.add_argument("--splits", nargs="+", default=["test"])
    p.add_argument("--checkpoint", default=None, help="a checkpoint file (overrides --epoch/--iter)")
    p.add_argument("--avg-from", default=None, help="with --checkpoint: average since this checkpoint")
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--iter", type=int, default=0, help="step checkpoint to use; 0 = newest")
    p.add_argument("--avg", type=int, default=1, help="number of checkpoints (intervals) to average")
    p.add_argument("--use-averaged-model", type=str2bool, default=True)
    p.add_argument("--decoding-method", default="modified_beam_search",
                   choices=["greedy_search", "modified_beam_search", "ctc_greedy_search"])
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--max-duration", type=float, default=300.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "reference"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--compile", type=str2bool, default=False,
                   help="torch.compile the encoder (fullgraph, dynamic shapes; input checks stay eager)")
    p.add_argument("--res-dir", default=None, help="default: <exp-dir>/<decoding-method>")
    return p


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


@torch.no_grad()
def decode_split(model, cuts, tokenizer, args, device) -> List[Dict]:
    from zipformer_fast.asr.search import decode
    from zipformer_fast.data.datamodule import AsrDataModule, DataConfig, batch_inputs
    dl = AsrDataModule(DataConfig(max_duration=args.max_duration, num_workers=0)).eval_dataloader(cuts)
    rows = []
    for batch in dl:
        feats, lens, texts, ids = batch_inputs(batch, device)
        enc, enc_lens = model.forward_encoder(feats, lens)
        hyps = decode(model, enc, enc_lens, method=args.decoding_method, beam=args.beam_size)
        for uid, ref, hyp in zip(ids, texts, hyps):
            rows.append({"id": uid, "ref": ref, "hyp": tokenizer.decode(hyp)})
    return sorted(rows, key=lambda r: r["id"])


def write_results(rows, res_dir: Path, split: str, method: str) -> dict:
    from zipformer_fast.asr.wer import error_rate, per_utterance_errors
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
    try:
        from zipformer_fast.data.datamodule import load_split
        from zipformer_fast.data.tokenizer import Tokenizer
        from zipformer_fast.backend import use_backend
        device = resolve_device(args.device)
        tokenizer = Tokenizer(args.bpe_model)
        model, params = load_model(args)
        if args.decoding_method == "ctc_greedy_search" and not params["use_ctc"]:
            raise SystemExit("error: ctc_greedy_search needs a model trained with --use-ctc 1")
        if args.decoding_method != "ctc_greedy_search" and not params["use_transducer"]:
            raise SystemExit("error: this model has no transducer; use --decoding-method ctc_greedy_search")
        model.to(device)
        if args.compile:
            model.compile_encoder()
        res_dir = Path(args.res_dir) if args.res_dir else Path(args.exp_dir) / args.decoding_method
        results = {}
        for split in args.splits:
            t0 = time.time()
            with use_backend(args.backend):
                rows = decode_split(model, load_split(args.manifest_dir, split, lazy=True), tokenizer, args, device)
            results[split] = write_results(rows, res_dir, split, args.decoding_method)
            results[split]["seconds"] = round(time.time() - t0, 1)
            r = results[split]
            print(f"{split} {args.decoding_method}: WER {r['wer']:.2f}% [{r['errors']} / {r['words']}, "
                  f"{r['ins']} ins, {r['del']} del, {r['sub']} sub] ({r['utterances']} utterances, "
                  f"{r['seconds']}s) -> {res_dir}", flush=True)
    except (FileNotFoundError, ImportError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    return results


if __name__ == "__main__":
    main()
