#!/usr/bin/env bash
# LibriSpeech: prepare (local corpus) -> train Zipformer S/M/L transducer (or CTC) -> decode -> WER.
#   CORPUS=/data/LibriSpeech SIZE=M NGPU=4 bash recipes/librispeech/run.sh
# Settings follow icefall's RESULTS.md runs (zipformer_spec.md 10.5): S 2 GPUs x 1500 s, M/L 4 GPUs
# x 1000 s, 30 epochs (use --num-epochs 50 for the best published numbers), fp16.
# CTC instead of a transducer: EXTRA="--use-transducer 0 --use-ctc 1" METHOD=ctc_greedy_search.
set -euo pipefail
cd "$(dirname "$0")/../.."
CORPUS=${CORPUS:?set CORPUS to the extracted LibriSpeech directory}
SIZE=${SIZE:-M}
NGPU=${NGPU:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
EPOCHS=${EPOCHS:-30}
AVG=${AVG:-9}
METHOD=${METHOD:-modified_beam_search}
EXTRA=${EXTRA:-}
PY=${PY:-.venv/bin/python}
DATA=data/librispeech
EXP=exp/librispeech-zipformer-$SIZE
case $SIZE in S) MAXDUR=1500 ;; M|L) MAXDUR=1000 ;; *) echo "SIZE must be S, M or L" >&2; exit 1 ;; esac

$PY -m recipes.librispeech.prepare --corpus-dir "$CORPUS" --data-dir $DATA

$PY -m torch.distributed.run --standalone --nproc_per_node="$NGPU" -m recipes.train \
  --manifest-dir $DATA/manifests --bpe-model $DATA/lang/bpe.model --exp-dir $EXP \
  --model-config "$SIZE" --max-duration $MAXDUR --num-epochs "$EPOCHS" --dtype fp16 \
  --save-every-n 4000 --average-period 200 $EXTRA

$PY -m recipes.decode --exp-dir $EXP --manifest-dir $DATA/manifests --bpe-model $DATA/lang/bpe.model \
  --splits test-clean test-other --epoch "$EPOCHS" --avg "$AVG" --decoding-method "$METHOD"
