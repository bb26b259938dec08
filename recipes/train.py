"""Train a Zipformer transducer and/or CTC model (optionally with an attention-decoder head and
CR-CTC) on lhotse cuts (any recipe's prepared data).

    python -m recipes.train --manifest-dir data/synthetic/manifests --bpe-model data/synthetic/lang/bpe.model \
        --exp-dir exp/synthetic --model-config recipes/synthetic/model_tiny.json ...
    python -m recipes.train --train-cuts my_train.jsonl.gz --valid-cuts my_dev.jsonl.gz --bpe-model bpe.model ...
    torchrun --standalone --nproc_per_node=2 -m recipes.train ...      # DDP (NCCL on GPUs, gloo on CPU)

icefall's loop (egs/librispeech/ASR/zipformer/train.py at icefall 36e0420): ScaledAdam + Eden stepped per batch, loss terms
summed over the batch with the warm-up weights, model schedules advanced every 10 batches with the
duration-adjusted batch count, a float64 running-average model on rank 0, fp16 (GradScaler) or
bf16 autocast. Checkpoints every --save-every-n steps and at each epoch end resume exactly: the
resumed run reproduces the uninterrupted run's parameters bit for bit (same world size, same
arguments). At the end, DDP runs check that every rank holds identical parameters.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from functools import partial
from pathlib import Path

import torch

from recipes.lib import checkpoint as ckpt_io
from recipes.lib import dist
from recipes.lib.amp import autocast, make_scaler, maybe_grow_scale
from recipes.lib.averaging import make_averaged_copy, update_averaged_model
from recipes.lib.cut_sources import musan_manifest, train_and_valid_cuts
from recipes.lib.module_state import get_module_state, set_module_state
from recipes.lib.model_factory import (attention_decoder_fields, build_model, config_to_dict,
                                       default_base_lr, load_config)
from recipes.lib.options import apply_causal_options, get_parser, validate
from recipes.lib.rng import get_rng_state, seed_everything, set_rng_state
from recipes.lib.run_log import RunLog

log = logging.getLogger("train")


def keep_cut(cut, tokenizer, min_duration: float, max_duration: float) -> bool:
    """icefall's filter: 1 s <= duration <= 20 s and (T_sub - 2) >= #tokens, so that the CTC and
    transducer losses are finite (T_sub = encoder frames after 4x subsampling)."""
    if not (min_duration <= cut.duration <= max_duration):
        return False
    # Cuts without stored features (Fbank on the fly) have no num_frames: 100 frames per second.
    frames = cut.num_frames if cut.num_frames is not None else round(cut.duration * 100)
    t_sub = ((frames - 7) // 2 + 1) // 2
    return t_sub - 2 >= len(tokenizer.encode(cut.supervisions[0].text))


def adjusted_batch_count(batch_idx_train: int, args, world_size: int) -> float:
    return batch_idx_train * (args.max_duration * world_size) / args.ref_duration


def resolve_resume(args, exp_dir: Path):
    if args.resume == "none":
        return None
    if args.resume == "auto":
        return ckpt_io.latest(exp_dir)
    return Path(args.resume)


def compute_loss(model, feats: torch.Tensor, feat_lens: torch.Tensor, targets, batch_idx_train: int,
                 weights, **forward_kwargs):
    """icefall train.py's compute_loss: the model's loss terms (AsrModel.forward; `model` may be its
    DDP wrapper) weighted by the warm-up schedule -> (loss, logging info with per-term sums, frames
    and utterances)."""
    from zipformer_fast.asr import AsrLosses
    losses = AsrLosses(*model(feats, feat_lens, targets, **forward_kwargs))
    terms = losses.terms(getattr(model, "module", model), forward_kwargs.get("use_cr_ctc", False))
    loss = weights.combine(batch_idx_train, **terms)
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss.item()} at batch {batch_idx_train} (terms "
                           f"{ {k: v.item() for k, v in terms.items()} }); check the data filter "
                           "(utterances with more tokens than encoder frames) and the learning rate")
    info = {k: v.detach().item() for k, v in terms.items()}
    info["loss"] = loss.detach().item()
    # icefall logs per-frame values; frames counted after 4x subsampling.
    info["frames"] = float((feat_lens // 4).sum().item())
    info["utterances"] = float(feats.size(0))
    return loss, info


class Trainer:
    def __init__(self, args, info: dist.DistInfo):
        from zipformer_fast.asr import LossWeights
        from zipformer_fast.data import AsrDataModule, DataConfig, Tokenizer
        from zipformer_fast.optim import Eden, ScaledAdam

        self.args, self.info, self.device = args, info, info.device
        self.exp_dir = Path(args.exp_dir)
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        self.tok = Tokenizer(args.bpe_model)
        config = apply_causal_options(load_config(args.model_config), args)
        seed_everything(args.seed)  # identical initial weights on every rank
        aed_fields = attention_decoder_fields(args) if args.use_attention_decoder else None
        self.model = build_model(config, self.tok.vocab_size, args.use_transducer, args.use_ctc,
                                 args.use_attention_decoder, aed_fields).to(self.device)
        base_lr = args.base_lr if args.base_lr is not None else default_base_lr(args.model_config)
        if args.optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=base_lr)
        else:
            self.optimizer = ScaledAdam(list(self.model.named_parameters()), lr=base_lr,
                                        clipping_scale=args.clipping_scale)
        self.scheduler = Eden(self.optimizer, args.lr_batches, args.lr_epochs,
                              warmup_batches=args.lr_warmup_batches, warmup_start=args.lr_warmup_start)
        self.scaler = make_scaler(self.device, args.dtype)
        self.params = dict(batch_idx_train=0, epoch=1, batches_consumed=0,
                           average_period=args.average_period, model_config=config_to_dict(config),
                           vocab_size=self.tok.vocab_size, use_transducer=args.use_transducer,
                           use_ctc=args.use_ctc, use_attention_decoder=args.use_attention_decoder,
                           attention_decoder=aed_fields, use_cr_ctc=args.use_cr_ctc,
                           world_size=info.world_size, base_lr=base_lr,
                           max_duration=args.max_duration, args=vars(args))
        self.model_avg = make_averaged_copy(self.model) if info.is_main else None
        if args.compile:  # after the copy: the compiled encoder is an instance attribute
            self.model.compile_encoder(backend=args.compile_backend)
        self.resume_rng = None
        self._maybe_resume()

        # CR-CTC applies its two-view SpecAugment inside the model's forward, in training only.
        self.cr_augment = None
        if args.use_cr_ctc and args.spec_aug:
            from zipformer_fast.asr import CrCtcAugment
            self.cr_augment = CrCtcAugment(time_mask_ratio=args.time_mask_ratio,
                                           time_warp_factor=args.spec_aug_time_warp)
        if info.distributed:
            # find_unused_parameters: icefall's setting (some bypass scales get no gradient).
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        else:
            self.ddp = self.model
        self.weights = LossWeights(warm_step=args.warm_step, simple_loss_scale=args.simple_loss_scale,
                                   ctc_loss_scale=args.ctc_loss_scale, cr_loss_scale=args.cr_loss_scale,
                                   attention_decoder_loss_scale=args.attention_decoder_loss_scale)

        self.data = data = AsrDataModule(DataConfig(
            max_duration=args.max_duration, num_buckets=args.num_buckets, num_workers=args.num_workers,
            # CR-CTC applies SpecAugment itself, per copy (icefall: enable_spec_aug must be off).
            seed=args.seed, spec_augment=args.spec_aug and not args.use_cr_ctc,
            time_warp_factor=args.spec_aug_time_warp,
            on_the_fly_feats=args.on_the_fly_feats, speed_perturb=args.speed_perturb,
            musan_cuts=musan_manifest(args)), rank=info.rank, world_size=info.world_size)
        keep = partial(keep_cut, tokenizer=self.tok, min_duration=args.min_duration,
                       max_duration=args.max_utt_duration)
        train_cuts, valid_cuts = train_and_valid_cuts(args)
        self.train_dl = data.train_dataloader(train_cuts.filter(keep))
        (log.warning if data.train_plan.capped else log.info)("%s", data.train_plan.describe())
        # DataLoader draws its worker base seed from this generator, not the global RNG (resume).
        self.train_dl.generator = torch.Generator().manual_seed(args.seed)
        self.valid_dl = None
        if valid_cuts is not None:
            self.valid_dl = data.eval_dataloader(valid_cuts.filter(keep))
            self.valid_dl.generator = torch.Generator().manual_seed(args.seed)
        self.run_log = RunLog(self.exp_dir, info.is_main, args.tensorboard, args.progress, args.log_interval,
                              total=args.max_steps or None, start=self.params["batch_idx_train"])
        self.first_batch_ids = None
        self.t_start = time.time()

    # ---------------------------------------------------------------------------- checkpoints
    def _maybe_resume(self) -> None:
        path = resolve_resume(self.args, self.exp_dir)
        if path is None:
            return
        ck = ckpt_io.load(path)
        if ck["params"]["world_size"] != self.info.world_size:
            raise SystemExit(f"error: {path} was written by {ck['params']['world_size']} processes; exact "
                             f"resume needs the same number (got {self.info.world_size})")
        if ck["params"]["model_config"] != self.params["model_config"]:
            raise SystemExit(f"error: {path} holds a different model config than --model-config")
        self.model.load_state_dict(ck["model"])
        set_module_state(self.model, ck["module_state"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        if ck.get("grad_scaler") is not None:
            self.scaler.load_state_dict(ck["grad_scaler"])
        for k in ("batch_idx_train", "epoch", "batches_consumed"):
            self.params[k] = ck["params"][k]
        if self.info.is_main:
            self.model_avg = ck["model_avg"]
        self.resume_rng = ck["rng"][self.info.rank]
        log.info("resumed from %s at batch %d (epoch %d, %d batches into it)", path,
                 self.params["batch_idx_train"], self.params["epoch"], self.params["batches_consumed"])

    def save(self, path: Path) -> None:
        rngs = dist.gather_objects(get_rng_state(), self.info)  # collective: every rank calls it
        if not self.info.is_main:
            return
        ckpt_io.save(path, {
            "model": self.model.state_dict(), "module_state": get_module_state(self.model),
            "model_avg": self.model_avg,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "params": dict(self.params), "rng": rngs})
        ckpt_io.remove_old(self.exp_dir, self.args.keep_last_k)

    # ------------------------------------------------------------------------------- training
    def loss_kwargs(self, training: bool) -> dict:
        """AsrModel.forward's settings; icefall augments the CR-CTC views in training only."""
        a = self.args
        return dict(prune_range=a.prune_range, am_scale=a.am_scale, lm_scale=a.lm_scale,
                    use_cr_ctc=a.use_cr_ctc, use_spec_aug=training and self.cr_augment is not None,
                    spec_augment=self.cr_augment)

    def step(self, batch) -> dict:
        from zipformer_fast.data import batch_inputs
        feats, lens, texts, ids = batch_inputs(batch, self.device)
        if self.first_batch_ids is None:
            self.first_batch_ids = ids
        with autocast(self.device, self.args.dtype):
            loss, info = compute_loss(self.ddp, feats, lens, self.tok.encode(texts),
                                      self.params["batch_idx_train"], self.weights,
                                      **self.loss_kwargs(training=True))
        self.scaler.scale(loss).backward()
        self.scheduler.step_batch(self.params["batch_idx_train"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        maybe_grow_scale(self.scaler, self.params["batch_idx_train"])
        return info

    @torch.no_grad()
    def validate(self) -> dict:
        from zipformer_fast.data import batch_inputs
        self.model.eval()
        tot = torch.zeros(2, dtype=torch.float64)
        rng = get_rng_state()  # validation must not move the training RNG stream
        try:
            for batch in self.valid_dl:
                feats, lens, texts, _ = batch_inputs(batch, self.device)
                with autocast(self.device, self.args.dtype):
                    _, info = compute_loss(self.model, feats, lens, self.tok.encode(texts),
                                           self.params["batch_idx_train"], self.weights,
                                           **self.loss_kwargs(training=False))
                tot += torch.tensor([info["loss"], info["frames"]], dtype=torch.float64)
        finally:
            set_rng_state(rng)
        self.model.train()
        dist.all_reduce_sum(tot, self.info)
        return {"valid_loss_per_frame": (tot[0] / max(tot[1], 1.0)).item()}

    def _stop_requested(self) -> bool:
        a = self.args
        if a.max_steps and self.params["batch_idx_train"] >= a.max_steps:
            return True
        if a.max_minutes:
            over = torch.tensor([float(time.time() - self.t_start > 60 * a.max_minutes)])
            return bool(dist.all_reduce_sum(over, self.info).item() > 0)  # all ranks stop together
        return False

    def train_one_epoch(self, epoch: int) -> bool:
        """Returns True when a step/time limit stopped training inside the epoch."""
        from zipformer_fast.nn import set_batch_count
        a, p = self.args, self.params
        self.model.train()
        for batch in self.train_dl:
            if p["batches_consumed"] % 10 == 0:  # icefall: batch_idx % 10 == 0, before the increment
                set_batch_count(self.model, adjusted_batch_count(p["batch_idx_train"], a, self.info.world_size))
            p["batch_idx_train"] += 1
            p["batches_consumed"] += 1
            b = p["batch_idx_train"]
            info = self.step(batch)
            if self.info.is_main and b % a.average_period == 0:
                update_averaged_model(self.model_avg, self.model, b, a.average_period)
            self.run_log.step(b, info, self.scheduler.get_last_lr()[0],
                              self.scaler.get_scale() if self.scaler.is_enabled() else None)
            if self.valid_dl is not None and b % a.valid_interval == 0:
                self.run_log.scalars(b, self.validate())
            stop = self._stop_requested()
            if b % a.save_every_n == 0 or stop:
                self.save(self.exp_dir / f"checkpoint-{b}.pt")
            if stop:
                return True
        return False

    def train(self) -> dict:
        from zipformer_fast.data import check_epoch
        from zipformer_fast.nn import set_batch_count
        a, p = self.args, self.params
        stopped = self._stop_requested()
        while not stopped and p["epoch"] <= a.num_epochs:
            epoch = p["epoch"]
            self.scheduler.step_epoch(epoch - 1)
            if p["batches_consumed"] == 0:
                seed_everything(a.seed + epoch - 1)  # icefall: fix_random_seed(seed + epoch - 1)
            else:
                # Mid-epoch resume: the schedules were last set at the last multiple of 10 batches.
                done = p["batches_consumed"]
                set_batch_count(self.model, adjusted_batch_count(
                    p["batch_idx_train"] - done % 10, a, self.info.world_size))
                set_rng_state(self.resume_rng)
            self.train_dl.sampler.load_state_dict({"epoch": epoch - 1, "batches_consumed": p["batches_consumed"]})
            stopped = self.train_one_epoch(epoch)
            if not stopped:
                check_epoch(p["batches_consumed"], self.data.train_plan, epoch)  # before epoch-N.pt
                p["epoch"], p["batches_consumed"] = epoch + 1, 0
                self.save(self.exp_dir / f"epoch-{epoch}.pt")
                if self.valid_dl is not None:
                    self.run_log.scalars(p["batch_idx_train"], self.validate())
        return self.finish()

    def finish(self) -> dict:
        summary = {"batch_idx_train": self.params["batch_idx_train"], "epoch": self.params["epoch"],
                   "train_seconds": round(time.time() - self.t_start, 1),
                   "world_size": self.info.world_size, **self.run_log.summary()}
        if self.info.distributed:
            summary["max_param_diff_across_ranks"] = replica_max_diff(self.model)
            summary["first_batch_ids_per_rank"] = dist.gather_objects(self.first_batch_ids, self.info)
        self.run_log.close()
        if self.info.is_main:
            (self.exp_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
        return summary


@torch.no_grad()
def replica_max_diff(model) -> float:
    """max |param_rank - param_rank0| over all parameters and ranks (0.0 when DDP kept them in sync)."""
    import torch.distributed as tdist
    worst = torch.zeros(1, dtype=torch.float64, device=next(model.parameters()).device)
    for p in model.parameters():
        ref = p.detach().clone()
        tdist.broadcast(ref, src=0)
        worst = torch.maximum(worst, (p.detach() - ref).abs().max().to(torch.float64).reshape(1))
    tdist.all_reduce(worst, op=tdist.ReduceOp.MAX)
    return worst.item()


def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    validate(args)
    info = dist.setup(args.device)
    logging.basicConfig(level=logging.INFO if info.is_main else logging.WARNING,
                        format=f"%(asctime)s [rank {info.rank}] %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    from zipformer_fast import use_backend
    from zipformer_fast.data import BatchingError
    try:
        with use_backend(args.backend):
            trainer = Trainer(args, info)
            summary = trainer.train()
    except (FileNotFoundError, ImportError, BatchingError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    finally:
        dist.cleanup()
    if info.is_main:
        log.info("done: %s", json.dumps({k: v for k, v in summary.items() if k != "first_batch_ids_per_rank"}))
    return summary


if __name__ == "__main__":
    main()
