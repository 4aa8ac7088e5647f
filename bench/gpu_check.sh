#!/usr/bin/env bash
# GPU readiness in one go (under 8 minutes on one H100/H200-class GPU), then one summary table:
#   (a) the `gpu`-marked tests; (b) the GPT-2 124M training step in bf16, eager and compiled, fused
#   AdamW, TF32 on, with tokens/s and MFU against the datasheet peak (bench/train_step.py);
#   (c) generation tokens/s against HF (bench/generate.py); (d) 20 steps of configs/gpt2-124m-fineweb.yaml
#   on synthetic shards (bench/synthetic_shards.py) through `gpt2 train`.
#
#     bash bench/gpu_check.sh                 # from the repository root, in the environment with torch+CUDA
#     GPT2_SHARED_DATA=../shared/data bash bench/gpu_check.sh   # offline: GPT-2's vocabulary for (d) from here
#
# Each part is a plain command that also runs on a CPU with --device cpu / small settings (see README).
# It stops at once where there is no CUDA device. Exit status: 0 when every part passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to torch ($("$PY" -c 'import torch; print("torch", torch.__version__)' 2>&1)); run it on a GPU machine" >&2
  exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
ROWS="$WORK/rows.tsv"
: > "$ROWS"
START=$SECONDS
row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$ROWS"; }  # part, status, seconds, result
run_part() {  # name, timeout seconds, command...: run it, log it, record status and time
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name: $*" >&2
  if timeout "$limit" "$@" > "$WORK/$name.log" 2>&1; then STATUS=ok; else STATUS="FAIL(rc=$?)"; fi
  ELAPSED=$((SECONDS - t0))
  tail -n 15 "$WORK/$name.log" >&2
}

# (a) gpu-marked tests
run_part tests 90 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider
row "gpu tests" "$STATUS" "$ELAPSED" "$(grep -E 'passed|failed|error|no tests' "$WORK/tests.log" | tail -n 1)"

# (b) 124M training step, bf16 autocast, AdamW fused (build_optimizer on CUDA), TF32 for fp32 matmuls
STEP="$WORK/step.jsonl"
for mode in eager compile; do
  flag=(); [ "$mode" = compile ] && flag=(--compile)
  run_part "step-$mode" 150 "$PY" bench/train_step.py --device cuda --models gpt2 --dtypes bf16 --seq-len 1024 \
    --batch 16 --steps 10 --optimizer --tf32 --no-hf "${flag[@]}" --json "$STEP"
  res=$("$PY" - "$STEP" "$mode" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])] if open(sys.argv[1]).read().strip() else []
rows = [r for r in rows if r["compile"] == (sys.argv[2] == "compile")]
print(f"{rows[-1]['tok_s_ours']:,.0f} tok/s, MFU {100 * rows[-1]['mfu_ours']:.1f}%" if rows else "no result")
PYEOF
)
  row "124M step bf16 $mode" "$STATUS" "$ELAPSED" "$res"
done

# (c) generation against HF
GEN="$WORK/gen.jsonl"
run_part generate 100 "$PY" bench/generate.py --device cuda --reps 3 --json "$GEN"
res=$("$PY" - "$GEN" <<'PYEOF'
import json, sys
try:
    r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
except (OSError, IndexError):
    print("no result"); sys.exit()
d = r["decode_tok_s"]
print(", ".join(f"{k} {v:,.0f} tok/s" for k, v in d.items()) + f"; same tokens as HF: {r['same_tokens']}")
PYEOF
)
row "generate (decode)" "$STATUS" "$ELAPSED" "$res"

# (d) 20 steps of the FineWeb recipe on synthetic shards (GPT-2's vocabulary comes from the cache or shared data)
SHARDS="$WORK/shards"
"$PY" bench/synthetic_shards.py "$SHARDS" --train-tokens 11000000 --val-tokens 600000 >&2
if [ -n "${GPT2_SHARED_DATA:-}" ] && [ -f "$GPT2_SHARED_DATA/gpt2/encoder.json" ]; then
  export GPT2_CACHE="$WORK/cache"
  mkdir -p "$GPT2_CACHE/tokenizers/gpt2"
  for f in encoder.json vocab.bpe gpt2.tiktoken; do ln -sf "$(cd "$GPT2_SHARED_DATA/gpt2" && pwd)/$f" "$GPT2_CACHE/tokenizers/gpt2/$f"; done
fi
if "$PY" -c 'from gpt2.tokenizer import load_tokenizer; load_tokenizer("gpt2")' > "$WORK/tok.log" 2>&1; then
  run_part fineweb 200 "$PY" -m gpt2 train gpt2-124m-fineweb "data.dir=$SHARDS" train.max_steps=20 \
    "train.out_dir=$WORK/run" train.log_interval=5 checkpoint.interval=0 eval.interval=20 eval.steps=2 \
    sample.interval=0
  res=$("$PY" - "$WORK/run/metrics.jsonl" <<'PYEOF'
import json, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1])]
except OSError:
    print("no metrics.jsonl"); sys.exit()
train = [r for r in rows if r.get("kind") == "train"]
if not train:
    print("no training steps logged"); sys.exit()
last = train[-1]
mfu = f", MFU {100 * last['mfu']:.1f}%" if last.get("mfu") else ""
print(f"step {last['step']}: loss {last['loss']:.3f}, {last['tok_per_s']:,.0f} tok/s{mfu}")
PYEOF
)
  row "fineweb recipe, 20 steps" "$STATUS" "$ELAPSED" "$res"
else
  row "fineweb recipe, 20 steps" "SKIPPED" 0 "GPT-2's vocabulary not available offline: set GPT2_SHARED_DATA (see $WORK/tok.log)"
fi

echo
echo "gpu_check on $("$PY" -c 'import torch; print(torch.cuda.get_device_name(), "| torch", torch.__version__)'), $((SECONDS - START)) s in all; logs in $WORK"
printf '| %-26s | %-10s | %5s | %s\n' part status s result
printf '|%s|%s|%s|%s\n' "----------------------------" "------------" "-------" "------"
while IFS=$'\t' read -r a b c d; do printf '| %-26s | %-10s | %5s | %s\n' "$a" "$b" "$c" "$d"; done < "$ROWS"
! grep -qP '\tFAIL' "$ROWS"
