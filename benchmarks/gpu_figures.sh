#!/usr/bin/env bash
# Issue 12's GPU figures in one run, for a session lent a GPU machine (its device time is short:
# about 15 minutes, the machine's start included). Run from the repository root:
#
#   make gpu-wheels                        # here, once: the wheels the GPU image lacks, into .whl/
#   # on the GPU machine, carrying .whl:   OUT=$OUT bash benchmarks/gpu_figures.sh
#   QUICK=1 DEVICE=cpu bash benchmarks/gpu_figures.sh   # a smoke run of the same steps, on CPU
#
# Each step has its own time limit (STEP_S, default 100 s), so one slow step cannot cost the
# rest. What it measures (bf16 autocast on CUDA; every figure a ratio against a reference run in
# the same process): the rollout vs generate() on gpt2-12l-768 at 8 and 32 envs, training tokens/s
# of a whole PPO iteration and its memory split vs envs, the update vs SB3's PPO.train, and
# lm-gym vs TRL's GRPOTrainer; nvidia-smi's memory in use is sampled every 0.5 s throughout.
# smollm2-135m is not run: its GGUF file alone (93 MiB) is over what a device call carries.
# Logs go to $OUT (at most 8 files: what a device call brings back).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_figures}
DEVICE=${DEVICE:-cuda}
STEP_S=${STEP_S:-100}
PY=${PY:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 LM_GYM_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "$DEVICE" = cpu ]; then
    PRECISION=(--threads 1)
else
    PRECISION=(--bf16)
fi
if [ -n "${QUICK:-}" ]; then
    MODEL=(--quick)
    TRL_MODELS=(--quick)
    SCALING=(--quick)
else
    MODEL=(--model gpt2-12l-768 --new-tokens 32)
    TRL_MODELS=(--models gpt2-6l-384 gpt2-12l-768 --iterations 3)
    SCALING=(--model gpt2-12l-768 --envs 8 32 64 --new-tokens-list 48 --new-tokens-at 48)
fi

{
    date -u
    nvidia-smi 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', \
torch.cuda.is_available(), 'transformers', transformers.__version__)"
} >"$OUT/machine.txt" 2>&1

SMI_PID=
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,memory.used --format=csv -lms 500 >"$OUT/smi.csv" 2>&1 &
    SMI_PID=$!
fi

FAILED=0
step() {  # step NAME SCRIPT ARGS...: run one benchmark under its limit, its output to NAME.log
    local name=$1
    shift
    echo "== $name: $*"
    timeout "$STEP_S" "$PY" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 15 "$OUT/$name.log"
    if [ "$rc" -ne 0 ]; then
        echo "== $name: exit $rc"
        FAILED=1
    fi
}

step rollout benchmarks/rollout_speed.py --device "$DEVICE" "${PRECISION[@]}" "${MODEL[@]}" \
    --n-envs 8 --repeats 3 --full-repeats 0
step rollout32 benchmarks/rollout_speed.py --device "$DEVICE" "${PRECISION[@]}" "${MODEL[@]}" \
    --n-envs 32 --repeats 3 --full-repeats 0
step scaling benchmarks/scaling.py --device "$DEVICE" "${PRECISION[@]}" "${SCALING[@]}" --envs-at 8
step update benchmarks/update_speed.py --device "$DEVICE" "${PRECISION[@]}" --repeats 3 \
    ${QUICK:+--quick}
step vs_trl benchmarks/vs_trl.py --device "$DEVICE" "${PRECISION[@]}" "${TRL_MODELS[@]}"

if [ -n "$SMI_PID" ]; then
    kill "$SMI_PID" 2>/dev/null
    echo "peak nvidia-smi memory.used: $(awk -F', ' 'NR > 1 {print $2}' "$OUT/smi.csv" |
        sort -n | tail -n 1)"
fi
exit "$FAILED"
