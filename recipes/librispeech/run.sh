#!/usr/bin/env bash
# LibriSpeech end to end, in stages (icefall's egs/librispeech/ASR/prepare.sh numbering style):
#   0 check the corpus (and MUSAN) directories      1 lhotse manifests        2 MUSAN cuts (optional)
#   3 speed perturbation + Fbank cuts               4 BPE model               5 train   6 decode
#
#   bash recipes/librispeech/run.sh --corpus-dir /data/LibriSpeech [--musan-dir /data/musan] \
#        [--size S|M|L] [--ngpu 4] [--stage 0] [--stop-stage 6] [--epochs 30] [--avg 9]
#
# Every stage can be rerun: stages 1-4 skip outputs that exist, stage 5 resumes from the newest
# checkpoint in the experiment directory, stage 6 rewrites its results. Training settings follow
# icefall's RESULTS.md runs: S 2 GPUs x 1500 s, M/L 4 GPUs x 1000 s, 30 epochs, fp16 (fp32 without
# a GPU); decode the average of epochs 22-30 (--avg 9) with modified beam search.
# Other options: --data-dir, --exp-dir, --model-config (a preset or JSON, overrides --size),
# --max-duration, --method, --python, --train-args "...", --decode-args "..." (appended verbatim).
# CTC instead of a transducer: --train-args "--use-transducer 0 --use-ctc 1" --method ctc_greedy_search.
set -euo pipefail
cd "$(dirname "$0")/../.."

corpus_dir=${CORPUS:-}
musan_dir=${MUSAN:-}
data_dir=data/librispeech
exp_dir=
size=M
model_config=
ngpu=
epochs=30
avg=9
method=modified_beam_search
max_duration=
stage=0
stop_stage=6
train_args=
decode_args=
python=${PY:-}

while [ $# -gt 0 ]; do
  opt=${1#--}; opt=${opt//-/_}
  case $opt in
    corpus_dir|musan_dir|data_dir|exp_dir|size|model_config|ngpu|epochs|avg|method|max_duration|stage|stop_stage|train_args|decode_args|python)
      [ $# -ge 2 ] || { echo "run.sh: $1 needs a value" >&2; exit 1; }
      printf -v "$opt" '%s' "$2"; shift 2 ;;
    *) echo "run.sh: unknown option $1 (see the top of $0)" >&2; exit 1 ;;
  esac
done

if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
case $size in S) default_maxdur=1500 ;; M|L) default_maxdur=1000 ;; *) echo "run.sh: --size must be S, M or L" >&2; exit 1 ;; esac
max_duration=${max_duration:-$default_maxdur}
model_config=${model_config:-$size}
exp_dir=${exp_dir:-exp/librispeech-zipformer-$size}
man=$data_dir/manifests

log() { echo "$(date '+%F %T') [run.sh] $*"; }
want() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

if want 0; then
  log "stage 0: check the corpus"
  if [ -z "$corpus_dir" ] || [ ! -d "$corpus_dir" ]; then
    echo "run.sh: --corpus-dir '$corpus_dir' is not a directory: download LibriSpeech from https://www.openslr.org/12" \
         "(or 'lhotse download librispeech --full DIR') and pass the extracted LibriSpeech/ directory" >&2
    exit 1
  fi
  if [ -n "$musan_dir" ] && [ ! -d "$musan_dir/noise" ]; then
    echo "run.sh: --musan-dir '$musan_dir' has no noise/: download MUSAN from https://www.openslr.org/17" \
         "(or 'lhotse download musan DIR') and pass the extracted musan/ directory" >&2
    exit 1
  fi
fi

# Stages 1-4 live in recipes.librispeech.prepare, which skips the outputs it already has.
first=$(( stage > 1 ? stage : 1 )); last=$(( stop_stage < 4 ? stop_stage : 4 ))
if [ "$first" -le "$last" ]; then
  $python -m recipes.librispeech.prepare --data-dir "$data_dir" --stage "$first" --stop-stage "$last" \
    ${corpus_dir:+--corpus-dir "$corpus_dir"} ${musan_dir:+--musan-dir "$musan_dir"}
fi

if want 5; then
  cuda_count=$($python -c "import torch; print(torch.cuda.device_count())")
  ngpu=${ngpu:-$(( cuda_count > 0 ? cuda_count : 1 ))}
  dtype=fp32; if [ "$cuda_count" -gt 0 ]; then dtype=fp16; fi  # icefall trains in fp16 on GPUs
  musan_flag=
  if [ -f "$man/musan_cuts.jsonl.gz" ]; then musan_flag="--enable-musan 1"; fi
  log "stage 5: train $model_config on $ngpu process(es), max-duration $max_duration, $epochs epochs -> $exp_dir"
  if [ "$ngpu" -gt 1 ]; then
    launch=($python -m torch.distributed.run --standalone --nproc_per_node="$ngpu" -m recipes.train)
  else
    launch=($python -m recipes.train)
  fi
  # --resume auto (the default): a rerun continues from the newest checkpoint in $exp_dir.
  # shellcheck disable=SC2086  # musan_flag and train_args are word lists
  "${launch[@]}" --manifest-dir "$man" --bpe-model "$data_dir/lang/bpe.model" --exp-dir "$exp_dir" \
    --model-config "$model_config" --max-duration "$max_duration" --num-epochs "$epochs" --dtype $dtype \
    --save-every-n 4000 --average-period 200 $musan_flag $train_args
fi

if want 6; then
  splits=()
  for s in test-clean test-other; do [ -f "$man/cuts_$s.jsonl.gz" ] && splits+=("$s"); done
  [ ${#splits[@]} -gt 0 ] || { echo "run.sh: no cuts_test-*.jsonl.gz in $man (run stages 1-4)" >&2; exit 1; }
  log "stage 6: decode ${splits[*]} with $method, epoch $epochs averaged over $avg"
  # shellcheck disable=SC2086
  $python -m recipes.decode --exp-dir "$exp_dir" --manifest-dir "$man" --bpe-model "$data_dir/lang/bpe.model" \
    --splits "${splits[@]}" --epoch "$epochs" --avg "$avg" --decoding-method "$method" $decode_args
fi
log "done: stages $stage-$stop_stage"
