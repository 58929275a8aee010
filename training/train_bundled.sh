#!/usr/bin/env bash
# Reproduces the bundled default models (Resources/Models) on this project's phantoms, on a CPU.
#   bash training/train_bundled.sh [cdm|sdseg|data|all]    (FROM=<stage> skips the stages before it)
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
