#!/usr/bin/env bash
# Step time of the official diffusers example scripts vs the s2s loop, interleaved in one run, at equal
# settings: the demo's tiny model, its 8 toy images (and 8 class images), 64 px, batch 2, CPU, fp32.
#
#   scripts/diffusers_examples/compare.sh EXAMPLES_DIR [OUT_DIR] [STEPS] [ROUNDS]
#
# EXAMPLES_DIR holds train_dreambooth.py, train_dreambooth_lora.py and textual_inversion.py from a diffusers
# checkout (examples/dreambooth, examples/textual_inversion); they need torchvision, and `python` on PATH
# must be an environment that has it and s2s (both sides run in it). The tiny model and the toy images
# come from the tiny config, built into results/ (the demo uses the world models, not these):
#   snakemake --cores 1 --configfile config/tiny.yaml --config results_dir=results -- \
#       results/tiny_models/sd/model_index.json results/toy/instance results/toy/class_images
# Results: OUT_DIR/{reference,ours}_{method}_{round}.json and OUT_DIR/summary.md. Measure on an idle
# machine; nothing else should run meanwhile.
set -euo pipefail
EXAMPLES=$(realpath "$1"); OUT=$(realpath -m "${2:-results/bench/diffusers_examples}")
STEPS=${3:-15}; ROUNDS=${4:-3}
HERE=$(dirname "$(realpath "$0")"); REPO=$(realpath "$HERE/../..")
MODEL=$REPO/results/tiny_models/sd
mkdir -p "$OUT"
# The example scripts read every file in the folder as an image: give them the PNGs only.
for kind in instance class_images; do
    rm -rf "$OUT/data/$kind"; mkdir -p "$OUT/data/$kind"
    ln -s "$REPO/results/toy/$kind"/*.png "$OUT/data/$kind/"
done
INSTANCE=$OUT/data/instance; CLASS=$OUT/data/class_images
NUM_CLASS=$(find "$CLASS" -name '*.png' | wc -l)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false CUDA_VISIBLE_DEVICES=""
NO_SAVE=$((STEPS + 100000))
DB=(--pretrained_model_name_or_path "$MODEL" --instance_data_dir "$INSTANCE" --instance_prompt "a photo of sks toy"
    --output_dir "$OUT/model" --resolution 64 --train_batch_size 2 --gradient_accumulation_steps 1
    --max_train_steps "$STEPS" --checkpointing_steps "$NO_SAVE" --lr_scheduler constant --lr_warmup_steps 0
    --mixed_precision no --seed 0 --dataloader_num_workers 0 --report_to tensorboard)

reference() {  # METHOD OUT.json
    local timed=(python "$HERE/timed_script.py" "$2")
    case $1 in
        dreambooth) "${timed[@]}" "$EXAMPLES/train_dreambooth.py" "${DB[@]}" --learning_rate 5e-6 ;;
        dreambooth_prior) "${timed[@]}" "$EXAMPLES/train_dreambooth.py" "${DB[@]}" --learning_rate 5e-6 \
            --with_prior_preservation --prior_loss_weight 1.0 --class_data_dir "$CLASS" \
            --num_class_images "$NUM_CLASS" --class_prompt "a photo of a toy" ;;
        lora) "${timed[@]}" "$EXAMPLES/train_dreambooth_lora.py" "${DB[@]}" --learning_rate 1e-3 --rank 4 ;;
        textual_inversion) "${timed[@]}" "$EXAMPLES/textual_inversion.py" --pretrained_model_name_or_path "$MODEL" \
            --train_data_dir "$INSTANCE" --placeholder_token "<sks>" --initializer_token toy \
            --learnable_property object --repeats 1 --output_dir "$OUT/model" --resolution 64 \
            --train_batch_size 2 --gradient_accumulation_steps 1 --learning_rate 5e-4 --lr_scheduler constant \
            --lr_warmup_steps 0 --max_train_steps "$STEPS" --checkpointing_steps "$NO_SAVE" \
            --save_steps "$NO_SAVE" --mixed_precision no --seed 0 --dataloader_num_workers 0 \
            --report_to tensorboard ;;
    esac
}

ours() {  # METHOD OUT.json
    local method=$1 prior=no
    [ "$method" = dreambooth_prior ] && method=dreambooth && prior=yes
    python "$HERE/timed_s2s.py" "$2" "$method" "$prior" "$STEPS" "$MODEL" "$INSTANCE" "$CLASS"
}

: > "$OUT/wall.txt"
for round in $(seq 1 "$ROUNDS"); do
    for method in dreambooth dreambooth_prior lora textual_inversion; do
        order=(reference ours); [ $((round % 2)) = 0 ] && order=(ours reference)  # alternate who goes first
        for side in "${order[@]}"; do
            rm -rf "$OUT/model"
            start=$(date +%s.%N)
            "$side" "$method" "$OUT/${side}_${method}_${round}.json" > "$OUT/${side}_${method}_${round}.log" 2>&1
            echo "$side $method $round $start $(date +%s.%N) $(cut -d' ' -f1 /proc/loadavg)" >> "$OUT/wall.txt"
        done
    done
done
python "$HERE/summarize.py" "$OUT" | tee "$OUT/summary.md"
