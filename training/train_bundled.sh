#!/usr/bin/env bash
# Reproduces the bundled default models (Resources/Models) on this project's phantoms, on a CPU.
#   bash training/train_bundled.sh [cdm|sdseg|data|all]          0.1.0: one fixed acquisition, from scratch
#   bash training/train_bundled.sh [data-v2|cdm-v2|sdseg-v2]     0.2.0: randomized acquisitions (see below)
#   (FROM=<stage> skips the stages before it)
# Stages run one after another; each stage starts from the previous stage's exported model folder.
# Budgets are optimizer steps sized for a 2-core CPU (about 30 min per method); scale them up on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs}
what=${1:-all}

train() { "$PY" -m training train --no-progress --log-every 25 --ckpt-every 100000 "$@"; }
from=${FROM:-}
run_stage() { [[ -z $from || $from == "$1" ]] && { from=; return 0; }; return 1; }
export_model() { "$PY" -m training export --checkpoint "$1" --out "$2" "${@:3}"; }

if [[ $what == data || $what == all ]]; then
  "$PY" -m training phantoms brats --out data/brats_phantoms --n 16 --seed 0
  "$PY" -m training phantoms btcv --out data/btcv_phantoms --n 16 --seed 0
fi

if [[ $what == cdm || $what == all ]]; then
  # MRM first; the C-UNet (on the ground-truth representation) and the MDN both need only the frozen MRM, so the MDN
  # comes last and its export is the complete model. EMA is left to long runs: these are a few hundred steps on a
  # cosine schedule whose last weights are already averaged-quality (stages run with --ema-decay export --raw-weights).
  common=(--recipe cdm --set data_root=data/brats_phantoms --set cache_dir=cache/cdm --optimizer adam --weight-decay 1e-5)
  run_stage mrm && train "${common[@]}" --set stage=mrm --out-dir "$RUNS/cdm-mrm" --max-steps ${CDM_MRM_STEPS:-400} --batch-size 16 \
    --lr 1e-3 --warmup-steps 40 --lr-schedule cosine
  [[ -z $from ]] && export_model "$RUNS/cdm-mrm" "$RUNS/cdm-mrm/model"
  run_stage cunet && train "${common[@]}" --set stage=cunet --set init="$RUNS/cdm-mrm/model" --out-dir "$RUNS/cdm-cunet" \
    --max-steps ${CDM_CUNET_STEPS:-500} --batch-size 12 --lr 1e-3 --warmup-steps 50 --lr-schedule cosine --ema-decay 0.995
  [[ -z $from ]] && export_model "$RUNS/cdm-cunet" "$RUNS/cdm-cunet/model" --raw-weights
  # The MDN as the paper describes it (unconditional), kept for the evaluation's comparison ...
  run_stage mdn && train "${common[@]}" --set stage=mdn --set init="$RUNS/cdm-cunet/model" --out-dir "$RUNS/cdm-mdn-unconditional" \
    --max-steps ${CDM_MDN_STEPS:-500} --batch-size 64 --lr 1e-3 --warmup-steps 50 --lr-schedule cosine
  export_model "$RUNS/cdm-mdn-unconditional" "$RUNS/cdm-tiny-phantom-unconditional-mdn" --name cdm-tiny-phantom-unconditional-mdn
  # ... and the bundled one, conditioned on the pooled source encoding (see docs/decisions.md).
  run_stage mdn-source && train "${common[@]}" --set stage=mdn --set mdn_source_condition=true --set init="$RUNS/cdm-cunet/model" \
    --out-dir "$RUNS/cdm-mdn" --max-steps ${CDM_MDN_STEPS:-500} --batch-size 64 --lr 1e-3 --warmup-steps 50 --lr-schedule cosine
  export_model "$RUNS/cdm-mdn" Resources/Models/cdm-tiny-phantom --dtype float16
  # Ablation M1: the same UNet without the representation, same data and budget.
  run_stage unet && train "${common[@]}" --set stage=unet --set name=cunet-m1-tiny-phantom --out-dir "$RUNS/cdm-unet" \
    --max-steps ${CDM_CUNET_STEPS:-500} --batch-size 12 --lr 1e-3 --warmup-steps 50 --lr-schedule cosine --ema-decay 0.995
  export_model "$RUNS/cdm-unet" "$RUNS/cunet-m1-tiny-phantom" --raw-weights
fi

if [[ $what == sdseg || $what == all ]]; then
  common=(--recipe sdseg --set data_root=data/btcv_phantoms --set cache_dir=cache/sdseg --optimizer adamw)
  train "${common[@]}" --set stage=autoencoder --out-dir "$RUNS/sdseg-ae" --max-steps ${SDSEG_AE_STEPS:-150} \
    --batch-size 8 --lr 1e-3 --warmup-steps 20 --lr-schedule cosine
  export_model "$RUNS/sdseg-ae" "$RUNS/sdseg-ae/model"
  train "${common[@]}" --set stage=ldm --set init="$RUNS/sdseg-ae/model" --out-dir "$RUNS/sdseg-ldm" \
    --max-steps ${SDSEG_LDM_STEPS:-400} --batch-size 8 --lr 4e-4 --warmup-steps 30 --lr-schedule cosine --ema-decay 0.995
  # The bundled model then got a second cosine cycle (a warm restart: resume with a longer schedule).
  train "${common[@]}" --set stage=ldm --set init="$RUNS/sdseg-ae/model" --out-dir "$RUNS/sdseg-ldm" --resume auto \
    --max-steps ${SDSEG_LDM_TOTAL_STEPS:-600} --batch-size 8 --lr 4e-4 --warmup-steps 30 --lr-schedule cosine --ema-decay 0.995
  export_model "$RUNS/sdseg-ldm" Resources/Models/sdseg-tiny-phantom --raw-weights --dtype float16
  train "${common[@]}" --set stage=segunet --set name=segunet-tiny-phantom --out-dir "$RUNS/sdseg-segunet" \
    --max-steps ${SDSEG_SEGUNET_STEPS:-150} --batch-size 8 --lr 1e-3 --warmup-steps 20 --lr-schedule cosine --ema-decay 0.995
  export_model "$RUNS/sdseg-segunet" "$RUNS/segunet-tiny-phantom" --raw-weights
fi

# ---------------------------------------------------------------------------------------------------------------
# 0.2.0: the 0.1.0 models trained further on phantoms of randomized acquisitions (training/phantoms/acquisition.py,
# profile "train") with the acquisition randomization of training/data/augment.py on every slice, at the card's
# in-plane spacing (slices resampled as the spacing-aware engine does). The baselines are trained from scratch on
# the same data for at least the same time. V010 names the 0.1.0 model folders: "git" takes them from the commit
# that bundled them (what the shipped 0.2.0 did), or a RUNS folder where the 0.1.0 stages above were rerun.
# The cdm-v2 and sdseg-v2 chains can run side by side (THREADS=1 each on a 2-core machine).
V010=${V010:-git}
V010_COMMIT=950e340
export OMP_NUM_THREADS=${THREADS:-${OMP_NUM_THREADS:-2}}
v010() {  # v010 <model name> -> folder holding its 0.1.0 card and weights
  if [[ $V010 != git ]]; then echo "$V010/$1"; return; fi
  local folder="$RUNS/$1-0.1.0"
  mkdir -p "$folder"
  for file in card.json model.safetensors; do git show "$V010_COMMIT:Resources/Models/$1/$file" > "$folder/$file"; done
  echo "$folder"
}

if [[ $what == data-v2 ]]; then
  "$PY" -m training phantoms brats --out data/brats_phantoms_v2 --n 16 --seed 0 --acquisition train
  "$PY" -m training phantoms btcv --out data/btcv_phantoms_v2 --n 16 --seed 0 --acquisition train
  # Held-out acquisitions (other scanners, protocols, grids) of other subjects, for evaluation only.
  "$PY" -m training phantoms brats --out data/brats_phantoms_shifted --n 6 --seed 1000 --acquisition shifted
  "$PY" -m training phantoms btcv --out data/btcv_phantoms_shifted --n 6 --seed 1000 --acquisition shifted
fi

if [[ $what == cdm-v2 ]]; then
  common=(--recipe cdm --set data_root=data/brats_phantoms_v2 --set cache_dir=cache/cdm-v2 --set version=0.2.0 --set mdn_source_condition=true
          --optimizer adam --weight-decay 1e-5 --lr-schedule cosine)
  start=$(v010 cdm-tiny-phantom)
  run_stage cunet-v2 && train "${common[@]}" --set stage=cunet --set init="$start" --out-dir "$RUNS/cdm-cunet-v2" \
    --max-steps ${CDM_CUNET_V2_STEPS:-400} --time-budget ${CDM_CUNET_V2_SECONDS:-1200} --batch-size 12 --lr 3e-4 --warmup-steps 20
  [[ -z $from ]] && export_model "$RUNS/cdm-cunet-v2" "$RUNS/cdm-cunet-v2/model" --raw-weights
  run_stage mdn-v2 && train "${common[@]}" --set stage=mdn --set init="$RUNS/cdm-cunet-v2/model" \
    --out-dir "$RUNS/cdm-mdn-v2" --max-steps ${CDM_MDN_V2_STEPS:-200} --time-budget ${CDM_MDN_V2_SECONDS:-600} --batch-size 64 \
    --lr 3e-4 --warmup-steps 20
  export_model "$RUNS/cdm-mdn-v2" Resources/Models/cdm-tiny-phantom --dtype float16
  # Ablation M1 on the same randomized data, from scratch, for the C-UNet's time.
  run_stage unet-v2 && train "${common[@]}" --set stage=unet --set name=cunet-m1-tiny-phantom --out-dir "$RUNS/cdm-unet-v2" \
    --max-steps ${CDM_UNET_V2_STEPS:-400} --time-budget ${CDM_CUNET_V2_SECONDS:-1200} --batch-size 12 --lr 1e-3 --warmup-steps 50 \
    --ema-decay 0.995
  export_model "$RUNS/cdm-unet-v2" "$RUNS/cunet-m1-tiny-phantom" --raw-weights
fi

if [[ $what == sdseg-v2 ]]; then
  common=(--recipe sdseg --set data_root=data/btcv_phantoms_v2 --set cache_dir=cache/sdseg-v2 --set version=0.2.0 --optimizer adamw
          --lr-schedule cosine)
  start=$(v010 sdseg-tiny-phantom)
  # The mask autoencoder is kept (masks at the same 1.6 mm spacing); the vision encoder and denoiser learn the
  # randomized acquisitions.
  run_stage ldm-v2 && train "${common[@]}" --set stage=ldm --set init="$start" --set finetune=true --out-dir "$RUNS/sdseg-ldm-v2" \
    --max-steps ${SDSEG_LDM_V2_STEPS:-300} --time-budget ${SDSEG_LDM_V2_SECONDS:-2100} --batch-size 8 --lr 2e-4 --warmup-steps 20 \
    --ema-decay 0.995
  # Inference-only (no mask encoder): the float16 file then stays under 25 MiB.
  export_model "$RUNS/sdseg-ldm-v2" Resources/Models/sdseg-tiny-phantom --raw-weights --dtype float16 --inference-only
  run_stage segunet-v2 && train "${common[@]}" --set stage=segunet --set name=segunet-tiny-phantom --out-dir "$RUNS/sdseg-segunet-v2" \
    --max-steps ${SDSEG_SEGUNET_V2_STEPS:-400} --time-budget ${SDSEG_SEGUNET_V2_SECONDS:-1200} --batch-size 8 --lr 1e-3 \
    --warmup-steps 20 --ema-decay 0.995
  # ... resumed for the rest of the LDM fine-tune's wall time (the first run shared the CPU with three others).
  train "${common[@]}" --set stage=segunet --set name=segunet-tiny-phantom --out-dir "$RUNS/sdseg-segunet-v2" --resume auto \
    --max-steps ${SDSEG_SEGUNET_V2_STEPS:-400} --time-budget ${SDSEG_SEGUNET_V2_MORE_SECONDS:-900} --batch-size 8 --lr 1e-3 \
    --warmup-steps 20 --ema-decay 0.995
  export_model "$RUNS/sdseg-segunet-v2" "$RUNS/segunet-tiny-phantom" --raw-weights
fi

if [[ $what == eval-v2 ]]; then
  # The tables in docs/evaluation: in-distribution test split (and the cards' metrics), the shifted set, the grids.
  evaluate() { "$PY" -m training evaluate "$@"; }
  evaluate segmentation --data-root data/btcv_phantoms_v2 --model sdseg-tiny-phantom --baseline "$RUNS/segunet-tiny-phantom" \
    --out docs/evaluation/sdseg --update-card --core --command-note "Phantoms of randomized acquisitions (profile train)."
  evaluate segmentation --data-root data/btcv_phantoms_shifted --split all --core --model sdseg-tiny-phantom \
    --baseline "$RUNS/segunet-tiny-phantom" --out docs/evaluation/sdseg-shifted --update-card --card-key shifted \
    --command-note "Held-out acquisitions (profile shifted), other subjects."
  evaluate translation --data-root data/brats_phantoms_v2 --model cdm-tiny-phantom --baseline "$RUNS/cunet-m1-tiny-phantom" \
    --out docs/evaluation/cdm --update-card --core --command-note "Phantoms of randomized acquisitions (profile train)."
  evaluate translation --data-root data/brats_phantoms_shifted --split all --core --model cdm-tiny-phantom \
    --baseline "$RUNS/cunet-m1-tiny-phantom" --out docs/evaluation/cdm-shifted --update-card --card-key shifted \
    --command-note "Held-out acquisitions (profile shifted), other subjects."
  evaluate spacing --data-root Resources/SampleData --model sdseg-tiny-phantom --out docs/evaluation/spacing/sdseg
  evaluate spacing --data-root Resources/SampleData --model cdm-tiny-phantom --out docs/evaluation/spacing/cdm
fi
