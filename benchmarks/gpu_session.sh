#!/usr/bin/env bash
# Everything this project runs on a lent GPU, in one command (one short lease):
#   1. the CUDA tests (pytest -m gpu),
#   2. generation throughput at 128x128, 20 DPM-Solver++ steps, bf16 (benchmarks/generation_throughput.py),
#      and training throughput of the CPU-default model at 64x64, batch 64: fp32, bf16, bf16 + torch.compile
#      (benchmarks/training_throughput.py; target >= 20 iterations/s),
#   3. in parallel for MINUTES minutes each: the bundle's demo checkpoint (train_diffusion.json itself),
#      the six downstream-experiment generators (experiments/train_generators.py), their six per-modality-timestep
#      twins for the label-first arms (train_generators.py --conditional) and, where the real-patient
#      folder is present (shared/data/sts_pet_ct), the three real-patient generators
#      (experiments/real_patients.py generators; SKIP_REAL=1 leaves them out).
# Results land in $OUT (default runs/gpu): throughput.json, training_throughput.json, diffusion_demo.pt (slim sampling checkpoint),
# demo_checkpoint.pt (full training checkpoint, resumable), generators.tar, real_generators.tar, logs.tar.
# Usage: MINUTES=6 OUT=runs/gpu bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-runs/gpu}
MINUTES=${MINUTES:-6}
W=${WORK:-/tmp/gpu_session}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu SKIP_THROUGHPUT=1 MINUTES=0.1 rehearses the script on a CPU
mkdir -p "$OUT" "$W/logs"
OUT=$(cd "$OUT" && pwd)
if [ -d .whl ]; then  # packages the GPU image lacks, carried as wheels
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
ROOT=$PWD
nvidia-smi > "$W/logs/nvidia-smi.txt" 2>&1
python3 -c "import torch, monai, ignite; print('torch', torch.__version__, 'monai', monai.__version__, 'ignite', ignite.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

stamp "CUDA tests"
python3 -m pytest -q -m gpu -p no:cacheprovider -o addopts="" -W ignore \
    tests/quality/test_filter_gpu.py tests/engines/test_paired_trainer.py tests/inferers/test_paired_diffusion_inferer.py \
    > "$W/logs/gpu_tests.log" 2>&1
echo "pytest exit $?"; tail -3 "$W/logs/gpu_tests.log"

stamp "throughput"
[ -n "${SKIP_THROUGHPUT:-}" ] || python3 benchmarks/generation_throughput.py --device cuda --amp bf16 --batch 64 256 --json "$OUT/throughput.json" 2>&1 | tee "$W/logs/throughput.log"
[ -n "${SKIP_THROUGHPUT:-}" ] || python3 benchmarks/generation_throughput.py --config cpu --size 64 --device cuda --amp bf16 --batch 256 --json "$W/logs/throughput_cpu_model.json" > "$W/logs/throughput_cpu_model.log" 2>&1

stamp "training throughput"
TT_ARGS=${TT_ARGS:-"--batch 64 --iters 100 --warmup 20"}  # TT_ARGS="--size 16 --batch 2 --iters 2 --warmup 1" rehearses
python3 benchmarks/training_throughput.py --device $DEVICE $TT_ARGS --json "$OUT/training_throughput.json" \
    2>&1 | tee "$W/logs/training_throughput.log" | grep -v "^{"

stamp "training for $MINUTES min"
demo() {  # the bundle's own config; falls back to fp32 if mixed precision fails to start
    cd "$ROOT/bundles/pet_ct_pairsynth" || return 1
    local args=(--config_file configs/train_diffusion.json --logging_file configs/logging.conf --device $DEVICE
        --epochs 100000 --batch_size ${DEMO_BATCH:-32} --progress False
        --output_dir "$W/demo" --export_path "$W/diffusion_demo.pt")
    local bf16=(--amp False --autocast_dtype bfloat16)
    [ "$DEVICE" = cpu ] && bf16=()
    python3 -m monai.bundle run "${args[@]}" "${bf16[@]}" --max_minutes "$MINUTES" > "$W/logs/demo_train.log" 2>&1 && return 0
    echo "demo training with bf16 failed; retrying in fp32" >> "$W/logs/demo_train.log"
    python3 -m monai.bundle run "${args[@]}" --amp False --max_minutes "$(python3 -c "print($MINUTES - 1)")" \
        >> "$W/logs/demo_train.log" 2>&1
}
gens() {
    local bf16=(--no-amp --autocast bfloat16)
    [ "$DEVICE" = cpu ] && bf16=(--no-amp)
    python3 experiments/train_generators.py --out "$W/generators" --device "$DEVICE" --max-minutes "$MINUTES" \
        "${bf16[@]}" > "$W/logs/generators.log" 2>&1 && return 0
    echo "generator training with bf16 failed; retrying in fp32" >> "$W/logs/generators.log"
    python3 experiments/train_generators.py --out "$W/generators" --device "$DEVICE" --no-amp \
        --max-minutes "$(python3 -c "print($MINUTES - 1)")" >> "$W/logs/generators.log" 2>&1
}
cond_gens() {  # the per-modality-timestep generators of the label-first arms (issue 14), same budget
    local bf16=(--no-amp --autocast bfloat16)
    [ "$DEVICE" = cpu ] && bf16=(--no-amp)
    python3 experiments/train_generators.py --conditional --out "$W/generators" --device "$DEVICE" \
        --max-minutes "$MINUTES" "${bf16[@]}" > "$W/logs/generators_cond.log" 2>&1
}
real_gens() {  # the real-patient experiment's generators (experiments/real_patients.py), where the data is
    [ -n "${SKIP_REAL:-}" ] && return 0
    local dir=${MONAI_PAIRSYNTH_STS_DIR:-}
    for d in "$ROOT/../shared/data/sts_pet_ct" "$ROOT/shared/data/sts_pet_ct"; do [ -z "$dir" ] && [ -d "$d" ] && dir=$d; done
    [ -n "$dir" ] || { echo "no real-patient folder" > "$W/logs/real_generators.log"; return 0; }
    local bf16=(--no-amp --autocast bfloat16)
    [ "$DEVICE" = cpu ] && bf16=(--no-amp)
    python3 experiments/real_patients.py generators --root "$W/real" --data-dir "$dir" --device "$DEVICE" --max-minutes "$MINUTES" \
        --jobs 3 "${bf16[@]}" > "$W/logs/real_generators.log" 2>&1
}
demo & demo_pid=$!
real_gens & real_pid=$!
gens & gens_pid=$!
cond_gens & cond_pid=$!
( sleep 60; nvidia-smi > "$W/logs/nvidia-smi-training.txt" 2>&1 ) &
wait $demo_pid; echo "demo exit $?"
wait $gens_pid; echo "generators exit $?"
wait $real_pid; echo "real-patient generators exit $?"
wait $cond_pid; echo "label-first generators exit $?"
stamp "done training"
tail -5 "$W/logs/demo_train.log"; cat "$W/logs/generators.log" | grep -v "^\[gen.*-m monai"

cp "$W/diffusion_demo.pt" "$OUT/" 2>/dev/null
cp "$W/demo/checkpoint.pt" "$OUT/demo_checkpoint.pt" 2>/dev/null
(cd "$W/generators" 2>/dev/null && tar cf "$OUT/generators.tar" gen_*.pt generators*.json */train.log */summary.json */run_config.json)
(cd "$W/real/generators" 2>/dev/null && tar cf "$OUT/real_generators.tar" gen_real_*.pt generators.json */summary.json */run_config.json)
(cd "$W" && tar cf "$OUT/logs.tar" logs)
stamp "all done"
