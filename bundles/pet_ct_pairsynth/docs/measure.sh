#!/usr/bin/env bash
# Wall time and peak memory (maximum resident set size, GNU time) of every bundle config at its CPU defaults,
# printed as the markdown rows of docs/README.md's table. Run from anywhere:
#
#     bash bundles/pet_ct_pairsynth/docs/measure.sh [CHECKPOINT] [OUT]
#
# CHECKPOINT: the diffusion checkpoint (default: the bundle's models/diffusion_demo.pt); OUT: scratch folder
# (default: the bundle's runs/measure). Every process uses one torch thread (--num_threads 1). Logs: OUT/<name>.log.
set -euo pipefail
BUNDLE="$(cd "$(dirname "$0")/.." && pwd)"
CKPT="$(realpath "${1:-$BUNDLE/models/diffusion_demo.pt}")"
OUT="${2:-$BUNDLE/runs/measure}"
mkdir -p "$OUT"
OUT="$(realpath "$OUT")"
PY="${PYTHON:-python}"
cd "$BUNDLE"
export PYTHONWARNINGS="ignore:parsing config_file:UserWarning"
RUN=("$PY" -m monai.bundle run)
TORCHRUN=("$PY" -m torch.distributed.run --nproc_per_node 2 -m monai.bundle run)

measure() {  # name, command...
    local name="$1"
    shift
    local slug
    slug=$(echo "$name" | tr -c 'A-Za-z0-9.\n' '_')
    if ! /usr/bin/time -v -o "$OUT/$slug.time" "$@" > "$OUT/$slug.log" 2>&1; then
        echo "$name failed; see $OUT/$slug.log" >&2
        exit 1
    fi
    local wall rss shown arg
    wall=$(grep "Elapsed (wall clock)" "$OUT/$slug.time" | awk '{print $NF}')
    rss=$(grep "Maximum resident set size" "$OUT/$slug.time" | awk '{print $NF}')
    shown=""
    for arg in "$@"; do  # quote what a shell would need quoted
        if [[ "$arg" =~ ^[A-Za-z0-9_./:=#-]+$ ]]; then shown+="$arg "; else shown+="\"$arg\" "; fi
    done
    shown=$(echo "${shown% }" | sed -e "s#$PY #python #g" -e "s#$OUT#OUT#g" -e "s#$CKPT#CHECKPOINT#g")
    printf '| %s | %s | %d MB | `%s` |\n' "$name" "$wall" $((rss / 1024)) "$shown"
}

echo "| run | wall time (m:ss) | peak RSS | command (in bundles/pet_ct_pairsynth) |"
echo "|---|---|---|---|"
measure "train_diffusion.json, 1 of 50 epochs" "${RUN[@]}" --config_file configs/train_diffusion.json \
    --epochs 1 --num_threads 1 --progress False --output_dir "$OUT/diffusion" --export_path "$OUT/diffusion/slim.pt"
measure "generate.json (pool of 16 from 64 candidates)" "${RUN[@]}" --config_file configs/generate.json \
    --diffusion_checkpoint "$CKPT" --num_threads 1 --progress False --output_dir "$OUT/generate"
measure "train_segmentation.json, real only" "${RUN[@]}" --config_file configs/train_segmentation.json \
    --synthetic_ratio 0 --num_threads 1 --progress False --output_dir "$OUT/seg_real"
measure "train_segmentation.json, ratio 0.5 from the pool file" "${RUN[@]}" --config_file configs/train_segmentation.json \
    --synthetic_ratio 0.5 --pool_file "$OUT/generate/pool.pt" --num_threads 1 --progress False --output_dir "$OUT/seg_mixed"
measure "train_segmentation.json, ratio 0.5, building its pool (8)" "${RUN[@]}" --config_file configs/train_segmentation.json \
    --synthetic_ratio 0.5 --diffusion_checkpoint "$CKPT" --num_threads 1 --progress False --output_dir "$OUT/seg_mixed_own"
measure "evaluate.json (two checkpoints + pool)" "${RUN[@]}" --config_file configs/evaluate.json \
    --baseline_checkpoint "$OUT/seg_real/model.pt" --segmentation_checkpoint "$OUT/seg_mixed/model.pt" \
    --pool_file "$OUT/generate/pool.pt" --num_threads 1 --output_dir "$OUT/evaluate"
measure "multi_gpu_train_diffusion.json, 2 CPU processes (gloo), 1 epoch; RSS per process" "${TORCHRUN[@]}" \
    --config_file "['configs/train_diffusion.json','configs/multi_gpu_train_diffusion.json']" --epochs 1 \
    --num_threads 1 --progress False --output_dir "$OUT/ddp_diffusion" --export_path "$OUT/ddp_diffusion/slim.pt"
measure "multi_gpu_train_segmentation.json, 2 CPU processes (gloo), pool built per rank; RSS per process" "${TORCHRUN[@]}" \
    --config_file "['configs/train_segmentation.json','configs/multi_gpu_train_segmentation.json']" \
    --diffusion_checkpoint "$CKPT" --num_threads 1 --progress False --output_dir "$OUT/ddp_seg"
measure "demo (python -m monai_pairsynth.demo)" "$PY" -m monai_pairsynth.demo --checkpoint "$CKPT" --output-dir "$OUT/demo"
measure "demo --quick" "$PY" -m monai_pairsynth.demo --quick --checkpoint "$CKPT" --output-dir "$OUT/demo_quick"
