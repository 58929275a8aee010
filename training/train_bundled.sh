#!/usr/bin/env bash
# Reproduces the bundled default models (Resources/Models) on this project's phantoms, on a CPU.
#   bash training/train_bundled.sh [cdm|sdseg|data|all]          0.1.0: one fixed acquisition, from scratch
#   bash training/train_bundled.sh [data-v2|cdm-v2|sdseg-v2]     0.2.0: randomized acquisitions (see below)
#   bash training/train_bundled.sh [sdseg-v3|sdseg-v3-unet|cdm-v3|cdm-v3-unet|eval-v3]   0.3.0 (see below)
#   bash training/train_bundled.sh [sdseg-v4|sdseg-v4-unet|cdm-v4|cdm-v4-unet|eval-v4]   0.4.0 (see below)
#   bash training/train_bundled.sh [sdseg-v5|sdseg-v5-unet|eval-v5]   union SDSeg 0.5.0 (see below)
#   bash training/train_bundled.sh [data-v6|sdseg-v6|eval-v6]   union SDSeg 0.6.0: oral contrast (see below)
#   bash training/train_bundled.sh [sdseg-v7|sdseg-v7-frozen|eval-v7]   union SDSeg 0.7.0: decoder trained (below)
#   bash training/train_bundled.sh [data-v8|sdseg-v8|sdseg-v8-scratch|sdseg-v8-unet|eval-v8-val|eval-v8]   0.8.0, on one GPU
#   bash training/train_bundled.sh [data-v9|sdseg-v9|eval-v9]   union SDSeg 0.9.0: abdomen-pelvis scans (below)
#   bash training/train_bundled.sh [ae-probe-z4|ae-probe-z8]   mask autoencoder round trip with 4 / 8 latent channels
#   bash training/train_bundled.sh [organs-v4|eval-organs-v4]   organ SDSeg 0.2.0 (below)
#   bash training/train_bundled.sh [organs-v5|eval-organs-v5]   organ SDSeg 0.3.0: abdomen-pelvis scans (below)
#   bash training/train_bundled.sh [organs-v6|eval-organs-v6]   organ SDSeg 0.4.0: trained alone longer (below)
#   bash training/train_bundled.sh [data-lesions|eval-lesions]   lesion stress sets, the union model on them (below)
#   bash training/train_bundled.sh [data-real-ct|eval-real-ct]   two public real CTs, both CT models on them (below)
#   bash training/train_bundled.sh [sdseg-v10|data-cut|eval-v10-val|eval-v10]   union SDSeg 0.10.0: cut fields (below)
#   bash training/train_bundled.sh [organs-v2-onehot|organs-v3|organs-v3-unet|edts-v2|...]   see each section
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
part() { [[ -z ${SET:-} || $SET == "$1" ]]; }  # SET=<part> runs one part of an eval-* block
export_model() { "$PY" -m training export --checkpoint "$1" --out "$2" "${@:3}"; }
# bundled_at COMMIT FOLDER [MODEL]: a bundled model (default the union SDSeg) as Resources/Models held it at COMMIT
# (a start for a later version)
bundled_at() {
  [[ -f $2/model.safetensors ]] && return 0
  mkdir -p "$2"
  for file in card.json model.safetensors; do
    git show "$1:Resources/Models/${3:-sdseg-tiny-phantom}/$file" > "$2/$file"
  done
}

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

# 0.3.0 of the union model (sdseg-v3): the 0.2.0 latent stage trained further on the same randomized data with the
# decoded-mask loss (mask_loss_weight: the codec's L1 on the decoded one-step estimate, as for the organ model; at
# weight 10 it weighs like the latent terms: at the start L1 0.05 against l_eps 0.37 and l_z0 0.65), and half of
# each batch at the last timestep, where the single-step reverse process starts (last_step_fraction);
# sdseg-v3-unet continues the 0.2.0 SegUNet baseline for the same wall time (THREADS=1 each). Both need the run
# folders of sdseg-v2. The bundled 0.3.0 is the sdseg-v3 export copied into Resources/Models/sdseg-tiny-phantom, its
# card keeping "default", the description and "inference" of 0.2.0 and given its lineage by hand before eval-v3 (which
# writes the metrics; the bf16 guard as in docs/evaluation/README.md, "Precision").
SDSEG_V3_SECONDS=${SDSEG_V3_SECONDS:-5100}
if [[ $what == sdseg-v3 ]]; then
  common=(--recipe sdseg --set data_root=data/btcv_phantoms_v2 --set cache_dir=cache/sdseg-v2 --set version=0.3.0 --optimizer adamw
          --lr-schedule cosine)
  [[ -f $RUNS/sdseg-ldm-v2/model/model.safetensors ]] || export_model "$RUNS/sdseg-ldm-v2" "$RUNS/sdseg-ldm-v2/model"
  train "${common[@]}" --set stage=ldm --set init="$RUNS/sdseg-ldm-v2/model" --set finetune=true --set mask_loss_weight=10.0 \
    --set last_step_fraction=0.5 --out-dir "$RUNS/sdseg-ldm-v3" --max-steps ${SDSEG_V3_STEPS:-550} --time-budget $SDSEG_V3_SECONDS \
    --batch-size 8 --lr 2e-4 --warmup-steps 20 --ema-decay 0.995
  # Exported beside the runs; copied into Resources/Models once its evaluation beat 0.2.0's (see below).
  export_model "$RUNS/sdseg-ldm-v3" "$RUNS/sdseg-v3-tiny-phantom" --raw-weights --dtype float16 --inference-only
fi
if [[ $what == sdseg-v3-unet ]]; then
  train --recipe sdseg --set data_root=data/btcv_phantoms_v2 --set cache_dir=cache/sdseg-v2 --optimizer adamw --lr-schedule cosine \
    --set stage=segunet --set name=segunet-tiny-phantom --set init="$RUNS/segunet-tiny-phantom" --out-dir "$RUNS/sdseg-segunet-v3" \
    --max-steps ${SDSEG_V3_UNET_STEPS:-400} --time-budget $SDSEG_V3_SECONDS --batch-size 8 --lr 5e-4 --warmup-steps 20 --ema-decay 0.995
  export_model "$RUNS/sdseg-segunet-v3" "$RUNS/segunet-v3-tiny-phantom" --raw-weights
fi

# CDM 0.3.0 (cdm-v3): the 0.2.0 model's MDN trained further (the C-UNet with the ground-truth representation was
# 5 dB ahead of sampled ones in the 0.1.0 evaluation, so the representation the MDN draws is where quality is lost);
# side by side, cdm-v3-unet continues the M1 UNet for the same wall time (THREADS=1 each).
CDM_V3_SECONDS=${CDM_V3_SECONDS:-1200}
cdm_v3_common=(--recipe cdm --set data_root=data/brats_phantoms_v2 --set cache_dir=cache/cdm-v2 --set mdn_source_condition=true
               --optimizer adam --weight-decay 1e-5 --lr-schedule cosine)
if [[ $what == cdm-v3 ]]; then
  train "${cdm_v3_common[@]}" --set version=0.3.0 --set stage=mdn --set init=Resources/Models/cdm-tiny-phantom \
    --out-dir "$RUNS/cdm-mdn-v3" --max-steps ${CDM_MDN_V3_STEPS:-350} --time-budget $CDM_V3_SECONDS --batch-size 64 --lr 3e-4 \
    --warmup-steps 20
  # Evaluated from this folder first, then copied into Resources/Models/cdm-tiny-phantom the same way as sdseg-v3.
  export_model "$RUNS/cdm-mdn-v3" "$RUNS/cdm-v3-tiny-phantom" --dtype float16
fi
if [[ $what == cdm-v3-unet ]]; then
  train "${cdm_v3_common[@]}" --set stage=unet --set name=cunet-m1-tiny-phantom --set init="$RUNS/cunet-m1-tiny-phantom" \
    --out-dir "$RUNS/cdm-unet-v3" --max-steps ${CDM_UNET_V3_STEPS:-300} --time-budget $CDM_V3_SECONDS --batch-size 12 --lr 5e-4 \
    --warmup-steps 20 --ema-decay 0.995
  export_model "$RUNS/cdm-unet-v3" "$RUNS/cunet-m1-v3-tiny-phantom" --raw-weights
fi

# 0.4.0 (sdseg-v4, cdm-v4): another round on the same randomized data, each beside its baseline continued for the
# same wall time (THREADS=1 each; all four side by side on a 2-core machine, then the two SDSeg runs alone).
# sdseg-v4: the 0.3.0 latent stage (run folder sdseg-ldm-v3, fp32) with the same options on a new cosine cycle.
# cdm-v4: the C-UNet of 0.3.0 trained further on the ground-truth representation (in 0.3.0 it had 313 steps on the
# randomized data, and the plain UNet led it on T2-FLAIR by 2.3 dB), then its MDN a little more; the MRM stays
# frozen, so the MDN's targets do not move. Both exports are evaluated from runs/ first and copied into
# Resources/Models as 0.3.0 was (see above), then `eval-v4`.
SDSEG_V4_SECONDS=${SDSEG_V4_SECONDS:-5400}
SDSEG_V4_MORE_SECONDS=${SDSEG_V4_MORE_SECONDS:-3000}
CDM_V4_CUNET_SECONDS=${CDM_V4_CUNET_SECONDS:-2100}
CDM_V4_MDN_SECONDS=${CDM_V4_MDN_SECONDS:-900}
if [[ $what == sdseg-v4 ]]; then
  [[ -f $RUNS/sdseg-ldm-v3/model/model.safetensors ]] || export_model "$RUNS/sdseg-ldm-v3" "$RUNS/sdseg-ldm-v3/model"
  sdseg_v4=(--recipe sdseg --set data_root=data/btcv_phantoms_v2 --set cache_dir=cache/sdseg-v2 --set version=0.4.0 --optimizer adamw
    --lr-schedule cosine --set stage=ldm --set init="$RUNS/sdseg-ldm-v3/model" --set finetune=true --set mask_loss_weight=10.0
    --set last_step_fraction=0.5 --out-dir "$RUNS/sdseg-ldm-v4" --max-steps ${SDSEG_V4_STEPS:-650} --batch-size 8 --lr 1.5e-4
    --warmup-steps 20 --ema-decay 0.995)
  run_stage ldm && train "${sdseg_v4[@]}" --time-budget $SDSEG_V4_SECONDS
  # The first run stopped at its time budget (step 410 of 650, lr 4.8e-5, three other trainings sharing the CPU);
  # `more` resumes it on the same cosine schedule up to max-steps (FROM=more runs only that part).
  run_stage more && train "${sdseg_v4[@]}" --resume auto --time-budget $SDSEG_V4_MORE_SECONDS
  export_model "$RUNS/sdseg-ldm-v4" "$RUNS/sdseg-v4-tiny-phantom" --raw-weights --dtype float16 --inference-only
fi
if [[ $what == sdseg-v4-unet ]]; then
  segunet_v4=(--recipe sdseg --set data_root=data/btcv_phantoms_v2 --set cache_dir=cache/sdseg-v2 --optimizer adamw --lr-schedule cosine
    --set stage=segunet --set name=segunet-tiny-phantom --set init="$RUNS/segunet-v3-tiny-phantom" --out-dir "$RUNS/sdseg-segunet-v4"
    --max-steps ${SDSEG_V4_UNET_STEPS:-480} --batch-size 8 --lr 4e-4 --warmup-steps 20 --ema-decay 0.995)
  run_stage ldm && train "${segunet_v4[@]}" --time-budget $SDSEG_V4_SECONDS
  run_stage more && train "${segunet_v4[@]}" --resume auto --time-budget $SDSEG_V4_MORE_SECONDS
  export_model "$RUNS/sdseg-segunet-v4" "$RUNS/segunet-v4-tiny-phantom" --raw-weights
fi

# 0.5.0 (sdseg-v5): the 0.4.0 latent stage (run folder sdseg-ldm-v4, exported fp32 with its mask encoder) on a new
# cosine cycle with every sample of each batch at t = T - 1 (last_step_fraction 1.0): the bundled model only ever
# runs the single step, and at 0.4.0 more DDIM steps scored lower than one (docs/decisions.md, SDSeg). Beside it
# the UNet baseline continues from 0.4.0's for the same wall time (sdseg-v5-unet; THREADS=1 each, side by side).
SDSEG_V5_SECONDS=${SDSEG_V5_SECONDS:-3600}
if [[ $what == sdseg-v5 ]]; then
  [[ -f $RUNS/sdseg-ldm-v4/model/model.safetensors ]] || export_model "$RUNS/sdseg-ldm-v4" "$RUNS/sdseg-ldm-v4/model"
  train --recipe sdseg --set data_root=data/btcv_phantoms_v2 --set cache_dir=cache/sdseg-v2 --set version=0.5.0 --optimizer adamw \
    --lr-schedule cosine --set stage=ldm --set init="$RUNS/sdseg-ldm-v4/model" --set finetune=true --set mask_loss_weight=10.0 \
    --set last_step_fraction=1.0 --out-dir "$RUNS/sdseg-ldm-v5" --max-steps ${SDSEG_V5_STEPS:-440} --batch-size 8 --lr 1.5e-4 \
    --warmup-steps 20 --ema-decay 0.995 --time-budget $SDSEG_V5_SECONDS
  export_model "$RUNS/sdseg-ldm-v5" "$RUNS/sdseg-v5-tiny-phantom" --raw-weights --dtype float16 --inference-only
fi
if [[ $what == sdseg-v5-unet ]]; then
  train --recipe sdseg --set data_root=data/btcv_phantoms_v2 --set cache_dir=cache/sdseg-v2 --optimizer adamw --lr-schedule cosine \
    --set stage=segunet --set name=segunet-tiny-phantom --set init="$RUNS/segunet-v4-tiny-phantom" --out-dir "$RUNS/sdseg-segunet-v5" \
    --max-steps ${SDSEG_V5_UNET_STEPS:-300} --batch-size 8 --lr 4e-4 --warmup-steps 20 --ema-decay 0.995 --time-budget $SDSEG_V5_SECONDS
  export_model "$RUNS/sdseg-segunet-v5" "$RUNS/segunet-v5-tiny-phantom" --raw-weights
fi
# 0.6.0 candidate (sdseg-v6): the bundled 0.5.0 (inference-only: it has no mask encoder) fine-tuned through its
# frozen mask decoder only (latent_targets=false: pure noise at T - 1, the decoded-mask loss) on the same training
# subjects, half of them with positive oral contrast (150-350 HU), which no earlier profile drew. The UNet baseline
# of 0.5.0 was not kept, so none is continued beside it. data-v6 writes that set; eval-v6 adds the oral stress set.
SDSEG_V6_SECONDS=${SDSEG_V6_SECONDS:-2100}
if [[ $what == data-v6 ]]; then
  "$PY" -m training phantoms btcv --out data/btcv_phantoms_v6 --n 16 --seed 0 --acquisition train --oral-contrast-share 0.5
  "$PY" -m training phantoms btcv --out data/btcv_phantoms_shifted_oral --n 6 --seed 1000 --acquisition shifted \
    --oral-contrast 250
fi
SDSEG_V5_COMMIT=fe335d9  # the commit that bundled 0.5.0: the start of 0.6.0 (Resources/Models now holds 0.6.0)
if [[ $what == sdseg-v6 ]]; then
  v5="$RUNS/sdseg-0.5.0-bundled"
  bundled_at "$SDSEG_V5_COMMIT" "$v5"
  train --recipe sdseg --set data_root=data/btcv_phantoms_v6 --set cache_dir=cache/sdseg-v6 --set version=0.6.0 --optimizer adamw \
    --lr-schedule cosine --set stage=ldm --set init="$v5" --set finetune=true \
    --set latent_targets=false --set mask_loss_weight=10.0 --set last_step_fraction=1.0 --out-dir "$RUNS/sdseg-ldm-v6" \
    --max-steps ${SDSEG_V6_STEPS:-400} --batch-size 8 --lr 1e-4 --warmup-steps 20 --ema-decay 0.995 --time-budget $SDSEG_V6_SECONDS
  export_model "$RUNS/sdseg-ldm-v6" "$RUNS/sdseg-v6-tiny-phantom" --raw-weights --dtype float16 --inference-only
fi
if [[ $what == eval-v6 || $what == eval-v7 || $what == eval-v8 || $what == eval-v9 ]]; then
  # After the export was copied to Resources/Models (card fields default, description, inference carried over).
  # No UNet row before eval-v8: the UNet of 0.5.0 was not kept. fp32 as the earlier reports (their machine's auto).
  # eval-v7 adds rows for its control (sdseg-v7-frozen) and for 0.6.0, the start of both (as sdseg-v7 extracted it);
  # eval-v8 the UNet trained beside 0.8.0 (sdseg-v8-unet) and 0.7.0, its start (as sdseg-v8 extracted it).
  seg() { "$PY" -m training evaluate segmentation --model sdseg-tiny-phantom --core --update-card --precision fp32 "$@"; }
  compare=()
  [[ $what == eval-v7 ]] && compare=(--compare "$RUNS/sdseg-v7-frozen-tiny-phantom,$RUNS/sdseg-0.6.0-bundled")
  [[ $what == eval-v8 ]] && compare=(--baseline "$RUNS/segunet-v8-tiny-phantom" --compare "$RUNS/sdseg-0.7.0-bundled")
  # eval-v9: 0.8.0, its start, as a row (sdseg-v9 extracted it); no UNet (the one beside 0.8.0 was not kept)
  [[ $what == eval-v9 ]] && compare=(--compare "$RUNS/sdseg-0.8.0-bundled")
  if part sdseg-in; then
    seg --data-root data/btcv_phantoms_v2 --out docs/evaluation/sdseg "${compare[@]}" \
      --command-note "Phantoms of randomized acquisitions (profile train)."
  fi
  if part sdseg-oral; then
    oral_compare=(); [[ $what == eval-v8 || $what == eval-v9 ]] && oral_compare=("${compare[@]}")  # v6, v7: model alone
    seg --data-root data/btcv_phantoms_shifted_oral --split all --out docs/evaluation/sdseg-shifted-oral "${oral_compare[@]}" \
      --card-key shifted_oral_contrast --command-note "The held-out acquisitions (profile shifted) with positive oral contrast: stomach, duodenum and small bowel fluid at 250 HU (--oral-contrast 250); otherwise the same cases as sdseg-shifted."
  fi
  if part sdseg-shifted; then
    seg --data-root data/btcv_phantoms_shifted --split all --out docs/evaluation/sdseg-shifted --card-key shifted \
      "${compare[@]}" --command-note "Held-out acquisitions (profile shifted), other subjects."
  fi
  if part sdseg-grids; then
    "$PY" -m training evaluate spacing --data-root Resources/SampleData --model sdseg-tiny-phantom \
      --out docs/evaluation/spacing/sdseg --precision fp32
  fi
  if [[ $what == eval-v9 ]] && part sdseg-pelvis; then
    seg --data-root data/btcv_phantoms_pelvis --split all --out docs/evaluation/sdseg-pelvis --card-key abdomen_pelvis \
      "${compare[@]}" --command-note "Abdomen-pelvis scans (data-v9: --pelvis, profile train, oral contrast in about half), other subjects than training."
  fi
  if [[ $what == eval-v9 ]] && part sdseg-pelvis-shifted; then
    seg --data-root data/btcv_phantoms_pelvis_shifted --split all --out docs/evaluation/sdseg-pelvis-shifted \
      --card-key abdomen_pelvis_shifted "${compare[@]}" \
      --command-note "The shifted set's subjects and scanners, scanned abdomen-pelvis (data-v9: --pelvis, profile shifted)."
  fi
fi
# 0.7.0 candidate (sdseg-v7): the bundled 0.6.0 trained further as 0.6.0 was (pure noise at T - 1, decoded-mask
# loss, same data), but with the mask decoder trained too (train_mask_decoder=true): the single step end to end.
# sdseg-v7-frozen is the control, the same run with the decoder frozen as in 0.6.0, for the same steps and time budget
# (THREADS=1 each, side by side): it separates what the decoder buys from what more training buys.
SDSEG_V7_SECONDS=${SDSEG_V7_SECONDS:-4500}
SDSEG_V6_COMMIT=e7ca601  # the commit that bundled 0.6.0: the start of 0.7.0
if [[ $what == sdseg-v7 || $what == sdseg-v7-frozen ]]; then
  v6="$RUNS/sdseg-0.6.0-bundled"
  bundled_at "$SDSEG_V6_COMMIT" "$v6"
  decoder=true; [[ $what == sdseg-v7-frozen ]] && decoder=false
  train --recipe sdseg --set data_root=data/btcv_phantoms_v6 --set cache_dir=cache/sdseg-v6 --set version=0.7.0 --optimizer adamw \
    --lr-schedule cosine --set stage=ldm --set init="$v6" --set finetune=true --set latent_targets=false \
    --set train_mask_decoder=$decoder --set mask_loss_weight=10.0 --set last_step_fraction=1.0 --out-dir "$RUNS/$what" \
    --max-steps ${SDSEG_V7_STEPS:-700} --batch-size 8 --lr 1e-4 --warmup-steps 20 --ema-decay 0.995 --time-budget $SDSEG_V7_SECONDS
  export_model "$RUNS/$what" "$RUNS/$what-tiny-phantom" --raw-weights --dtype float16 --inference-only
fi
# 0.8.0 candidates, on one GPU (DEVICE=cuda; the three run side by side, each for SDSEG_V8_SECONDS of wall time,
# with --fit-to-budget sizing each cosine to its budget on whatever machine runs it):
#   sdseg-v8          0.7.0 trained further as 0.7.0 was (single step end to end, decoder trained)
#   sdseg-v8-scratch  a new SDSeg from scratch, the paper's stages: mask autoencoder (20% of the time), latent stage
#                     with latent targets (50%), then the single step end to end (30%)
#   sdseg-v8-unet     the plain UNet baseline from scratch, for the scratch chain's total time
# All on data-v6's subjects, batch 16, no EMA (each cosine ends at its floor; raw weights exported). data-v8 writes
# a validation set (other subjects, the train profile) to choose between the two SDSeg candidates without looking
# at the test sets; eval-v8-val scores both on it. A rerun needs the earlier run folders removed (the trainer refuses an
# out dir that holds checkpoints unless it resumes).
SDSEG_V8_SECONDS=${SDSEG_V8_SECONDS:-320}
SDSEG_V7_COMMIT=0d9a286  # the commit that bundled 0.7.0: the start of sdseg-v8
v8_common=(--recipe sdseg --set data_root=data/btcv_phantoms_v6 --set cache_dir=cache/sdseg-v6 --set version=0.8.0 --optimizer adamw
           --lr-schedule cosine --batch-size 16 --device "${DEVICE:-cuda}" --num-workers "${WORKERS:-4}" --amp off
           --max-steps 1000000 --fit-to-budget 40)
v8_share() { echo $(( SDSEG_V8_SECONDS * $1 / 100 )); }
if [[ $what == data-v8 ]]; then
  "$PY" -m training phantoms btcv --out data/btcv_phantoms_val --n 4 --seed 2000 --acquisition train \
    --oral-contrast-share 0.5 --workers 4
fi
if [[ $what == sdseg-v8 ]]; then
  v7="$RUNS/sdseg-0.7.0-bundled"
  bundled_at "$SDSEG_V7_COMMIT" "$v7"
  train "${v8_common[@]}" --set stage=ldm --set init="$v7" --set finetune=true --set latent_targets=false \
    --set train_mask_decoder=true --set mask_loss_weight=10.0 --set last_step_fraction=1.0 --out-dir "$RUNS/sdseg-v8" \
    --lr 1e-4 --warmup-steps 50 --time-budget "$SDSEG_V8_SECONDS"
  export_model "$RUNS/sdseg-v8" "$RUNS/sdseg-v8-tiny-phantom" --raw-weights --dtype float16 --inference-only
fi
if [[ $what == sdseg-v8-scratch ]]; then
  run=$RUNS/sdseg-v8-scratch
  train "${v8_common[@]}" --set stage=autoencoder --out-dir "$run-ae" --lr 1e-3 --warmup-steps 50 --time-budget $(v8_share 20)
  export_model "$run-ae" "$run-ae/model"
  train "${v8_common[@]}" --set stage=ldm --set init="$run-ae/model" --set mask_loss_weight=10.0 --set last_step_fraction=0.5 \
    --out-dir "$run-ldm" --lr 4e-4 --warmup-steps 50 --time-budget $(v8_share 50)
  export_model "$run-ldm" "$run-ldm/model"
  train "${v8_common[@]}" --set stage=ldm --set init="$run-ldm/model" --set finetune=true --set latent_targets=false \
    --set train_mask_decoder=true --set mask_loss_weight=10.0 --set last_step_fraction=1.0 --out-dir "$run-e2e" \
    --lr 1e-4 --warmup-steps 20 --time-budget $(v8_share 30)
  export_model "$run-e2e" "$run-tiny-phantom" --raw-weights --dtype float16 --inference-only
fi
if [[ $what == sdseg-v8-unet ]]; then
  train "${v8_common[@]}" --set stage=segunet --set name=segunet-tiny-phantom --out-dir "$RUNS/sdseg-v8-segunet" --lr 1e-3 \
    --warmup-steps 50 --time-budget "$SDSEG_V8_SECONDS"
  export_model "$RUNS/sdseg-v8-segunet" "$RUNS/segunet-v8-tiny-phantom" --raw-weights --dtype float16
fi
if [[ $what == eval-v8-val ]]; then
  "$PY" -m training evaluate segmentation --data-root data/btcv_phantoms_val --split all --core --precision fp32 \
    --device "${DEVICE:-cuda}" --model "$RUNS/sdseg-v8-tiny-phantom" --compare "$RUNS/sdseg-v8-scratch-tiny-phantom" \
    --out "$RUNS/eval-v8-val" --command-note "Validation phantoms (data-v8)."
fi
# 0.9.0 (sdseg-v9): 0.8.0 trained further as 0.8.0 was (single step end to end, decoder trained) on the same subjects,
# half of them now scanned abdomen-pelvis (--pelvis-share 0.5: the pelvis drawn below the abdomen, unlabelled, the
# field reaching past the symphysis). 0.8.0 had never seen the pelvis and labelled much of it (Dice 0.71 on
# abdomen-pelvis phantoms). data-v9 writes the training set and two abdomen-pelvis test sets: other subjects under
# the train profile, and the shifted set's subjects and scanners scanned abdomen-pelvis. On this 2-core CPU, with
# the cosine fitted to SDSEG_V9_SECONDS. eval-v9 (with eval-v8, above) adds the two abdomen-pelvis reports.
SDSEG_V9_SECONDS=${SDSEG_V9_SECONDS:-3600}
SDSEG_V8_COMMIT=5b5ff4c  # the commit that bundled 0.8.0: the start of sdseg-v9
if [[ $what == data-v9 ]]; then
  "$PY" -m training phantoms btcv --out data/btcv_phantoms_v9 --n 16 --seed 0 --acquisition train \
    --oral-contrast-share 0.5 --pelvis-share 0.5 --workers 2
  "$PY" -m training phantoms btcv --out data/btcv_phantoms_pelvis --n 6 --seed 3000 --acquisition train --pelvis \
    --oral-contrast-share 0.5 --workers 2
  "$PY" -m training phantoms btcv --out data/btcv_phantoms_pelvis_shifted --n 6 --seed 1000 --acquisition shifted \
    --pelvis --workers 2
fi
# Lesion stress sets (data-lesions): the in-distribution and shifted test sets' patients and scanners again, with
# focal lesions in the liver, kidneys or spleen (phantoms btcv --lesions: cysts, hypo- and hypervascular tumours,
# labelled as their organ as in BTCV); the images differ only in the lesions, the labels not at all, so each report
# pairs with the plain set's. No recipe trains on lesions. eval-lesions scores the bundled union model on them
# (its organ counterpart is part of eval-organs-v6).
LESIONS_NOTE="The in-distribution test set's patients and scanners with focal lesions in the liver, kidneys or spleen (data-lesions: --lesions, profile train); labels as without them."
LESIONS_SHIFTED_NOTE="The shifted set's patients and scanners with focal lesions in the liver, kidneys or spleen (data-lesions: --lesions, profile shifted); labels as without them."
if [[ $what == data-lesions ]]; then
  "$PY" -m training phantoms btcv --out data/btcv_phantoms_v2_lesions --n 16 --seed 0 --acquisition train --lesions --workers 2
  "$PY" -m training phantoms btcv --out data/btcv_phantoms_shifted_lesions --n 6 --seed 1000 --acquisition shifted \
    --lesions --workers 2
fi
# lesion_reports: the two lesion reports of the union model, run by the caller's seg (eval-lesions, eval-v10)
lesion_reports() {
  if part sdseg-lesions; then
    seg --data-root data/btcv_phantoms_v2_lesions --out docs/evaluation/sdseg-lesions --card-key lesions \
      --command-note "$LESIONS_NOTE"
  fi
  if part sdseg-lesions-shifted; then
    seg --data-root data/btcv_phantoms_shifted_lesions --split all --out docs/evaluation/sdseg-lesions-shifted \
      --card-key lesions_shifted --command-note "$LESIONS_SHIFTED_NOTE"
  fi
  return 0
}
if [[ $what == eval-lesions ]]; then
  seg() { "$PY" -m training evaluate segmentation --model sdseg-tiny-phantom --core --update-card --precision fp32 "$@"; }
  lesion_reports
fi
# Real CTs (data-real-ct, eval-real-ct): the two public abdominal CTs with reference segmentations that
# TotalSegmentator's source package on PyPI carries among its test files (version and checksum pinned; fetched
# from the package registry, not redistributed here): a contrast-enhanced upper abdomen as a DICOM series
# (512 x 512 x 20, 0.98 x 0.98 x 2 mm) and a non-contrast abdomen in NIfTI (122 x 101 x 30, 3 mm isotropic).
# Their references are TotalSegmentator's (a trained model, not hand-drawn), renumbered to the 13 BTCV organs by
# `import-totalsegmentator`. No recipe trains on them; eval-real-ct scores both bundled CT models.
TOTALSEGMENTATOR_SDIST=totalsegmentator-2.18.0.tar.gz
TOTALSEGMENTATOR_SHA256=5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03
REAL_CT_NOTE="Two public real abdominal CTs (data-real-ct): 0001 a contrast-enhanced upper abdomen, DICOM series 512 x 512 x 20 at 0.98 x 0.98 x 2 mm; 0002 a non-contrast abdomen, NIfTI 122 x 101 x 30 at 3 mm. References: TotalSegmentator's segmentations shipped with them, renumbered to the BTCV organs (import-totalsegmentator)."
if [[ $what == data-real-ct ]]; then
  source_dir=cache/totalsegmentator-source
  mkdir -p "$source_dir"
  [[ -f $source_dir/$TOTALSEGMENTATOR_SDIST ]] || "$PY" -m pip download --no-deps --no-binary :all: \
    --dest "$source_dir" "TotalSegmentator==2.18.0"
  echo "$TOTALSEGMENTATOR_SHA256  $source_dir/$TOTALSEGMENTATOR_SDIST" | sha256sum --check --quiet
  tar -xzf "$source_dir/$TOTALSEGMENTATOR_SDIST" -C "$source_dir" totalsegmentator-2.18.0/tests/reference_files
  files="$source_dir/totalsegmentator-2.18.0/tests/reference_files"
  [[ -f data/real_ct_totalseg/label/label0002.nii.gz ]] || "$PY" -m training import-totalsegmentator \
    --out data/real_ct_totalseg --case "$files/example_ct_dicom" "$files/example_seg_dicom.nii.gz" \
    --case "$files/example_ct_sm.nii.gz" "$files/example_seg.nii.gz"
fi
if [[ $what == eval-real-ct ]]; then
  if part real-union; then
    "$PY" -m training evaluate segmentation --model sdseg-tiny-phantom --data-root data/real_ct_totalseg --split all \
      --core --outside-body-row --update-card --card-key real_ct --precision fp32 --out docs/evaluation/sdseg-real-ct \
      --command-note "$REAL_CT_NOTE"
  fi
  if part real-organs; then
    "$PY" -m training evaluate segmentation --model Resources/Models/sdseg-organs-tiny-phantom --data-root \
      data/real_ct_totalseg --split all --core --no-memory --update-card --card-key real_ct --precision fp32 \
      --out docs/evaluation/sdseg-organs-real-ct --command-note "$REAL_CT_NOTE"
  fi
  if part real-grids; then  # the DICOM case (0001) resampled to other pixel sizes and to 5 mm slices
    "$PY" -m training evaluate spacing --data-root data/real_ct_totalseg --model sdseg-tiny-phantom \
      --out docs/evaluation/spacing/sdseg-real-ct --precision fp32
  fi
fi
# 0.10.0 (sdseg-v10): 0.9.0 trained further the same way on the same subjects, with fields cut by straight edges
# through the body in a quarter of the training slices (augment cut_probability 0.25: each side cut with probability
# 1/2 by 10-45 % of the field, opposite sides together at most 60 %). The reason: the real 3 mm CT (data-real-ct,
# 0002) with 40 % of its width cropped away, as a targeted reconstruction or a stored crop leaves it, fell from
# 0.852 to 0.568 with 0.9.0, whole slices left empty; training had only ever cut the field by a centred circle.
# data-cut writes the stress sets: the shifted phantoms and both real CTs with 40 % of the field removed on the
# patient's left (the side a right-sided targeted reconstruction loses) or right.
# eval-v10-val chooses between 0.10.0 and 0.9.0 on the validation subjects; eval-v10 writes the reports.
SDSEG_V10_SECONDS=${SDSEG_V10_SECONDS:-3000}
SDSEG_V9_COMMIT=0ef8afe  # the commit that bundled 0.9.0: the start of sdseg-v10
if [[ $what == sdseg-v10 ]]; then
  v9="$RUNS/sdseg-0.9.0-bundled"
  bundled_at "$SDSEG_V9_COMMIT" "$v9"
  train --recipe sdseg --set data_root=data/btcv_phantoms_v9 --set cache_dir=cache/sdseg-v9 --set version=0.10.0 \
    --optimizer adamw --lr-schedule cosine --set stage=ldm --set init="$v9" --set finetune=true --set latent_targets=false \
    --set train_mask_decoder=true --set mask_loss_weight=10.0 --set last_step_fraction=1.0 \
    --set 'augment={"cut_probability": 0.25}' --out-dir "$RUNS/sdseg-v10" \
    --batch-size 8 --lr 1e-4 --warmup-steps 20 --max-steps 100000 --fit-to-budget 20 --time-budget "$SDSEG_V10_SECONDS" \
    --device cpu
  export_model "$RUNS/sdseg-v10" "$RUNS/sdseg-v10-tiny-phantom" --raw-weights --dtype float16 --inference-only
fi
if [[ $what == data-cut ]]; then
  for side in left right; do
    [[ -d data/btcv_phantoms_shifted_cut_$side ]] || "$PY" -m training cut-field --data-root data/btcv_phantoms_shifted \
      --out "data/btcv_phantoms_shifted_cut_$side" --remove "$side" --fraction 0.4
  done
  for side in left right; do
    [[ -d data/real_ct_totalseg_cut_$side ]] || "$PY" -m training cut-field --data-root data/real_ct_totalseg \
      --out "data/real_ct_totalseg_cut_$side" --remove "$side" --fraction 0.4
  done
fi
if [[ $what == eval-v10-val ]]; then
  "$PY" -m training evaluate segmentation --data-root data/btcv_phantoms_val --split all --core --precision fp32 \
    --model "$RUNS/sdseg-v10-tiny-phantom" --compare "$RUNS/sdseg-0.9.0-bundled" --out "$RUNS/eval-v10-val" \
    --command-note "Validation phantoms (data-v8)."
fi
if [[ $what == eval-v10 ]]; then
  # After the export was copied to Resources/Models (card fields default, description, inference carried over);
  # 0.9.0, its start, as a row of every report (sdseg-v10 extracted it).
  seg() { "$PY" -m training evaluate segmentation --model sdseg-tiny-phantom --core --update-card --precision fp32 \
    --compare "$RUNS/sdseg-0.9.0-bundled" "$@"; }
  if part sdseg-in; then
    seg --data-root data/btcv_phantoms_v2 --out docs/evaluation/sdseg \
      --command-note "Phantoms of randomized acquisitions (profile train)."
  fi
  if part sdseg-shifted; then
    seg --data-root data/btcv_phantoms_shifted --split all --out docs/evaluation/sdseg-shifted \
      --card-key shifted --command-note "Held-out acquisitions (profile shifted), other subjects."
  fi
  if part sdseg-oral; then
    seg --data-root data/btcv_phantoms_shifted_oral --split all --out docs/evaluation/sdseg-shifted-oral \
      --card-key shifted_oral_contrast --command-note "The held-out acquisitions (profile shifted) with positive oral contrast: stomach, duodenum and small bowel fluid at 250 HU (--oral-contrast 250); otherwise the same cases as sdseg-shifted."
  fi
  if part sdseg-pelvis; then
    seg --data-root data/btcv_phantoms_pelvis --split all --out docs/evaluation/sdseg-pelvis \
      --card-key abdomen_pelvis --command-note "Abdomen-pelvis scans (data-v9: --pelvis, profile train, oral contrast in about half), other subjects than training."
  fi
  if part sdseg-pelvis-shifted; then
    seg --data-root data/btcv_phantoms_pelvis_shifted --split all \
      --out docs/evaluation/sdseg-pelvis-shifted --card-key abdomen_pelvis_shifted \
      --command-note "The shifted set's subjects and scanners, scanned abdomen-pelvis (data-v9: --pelvis, profile shifted)."
  fi
  for side in left right; do
    if part "sdseg-cut-$side"; then
      seg --data-root "data/btcv_phantoms_shifted_cut_$side" --split all \
        --out "docs/evaluation/sdseg-shifted-cut-$side" --card-key "shifted_cut_$side" \
        --command-note "The shifted set with 40 % of the field removed on the patient's $side (data-cut)."
    fi
  done
  if part real-union; then
    seg --data-root data/real_ct_totalseg --split all --outside-body-row --card-key real_ct \
      --out docs/evaluation/sdseg-real-ct --command-note "$REAL_CT_NOTE"
  fi
  for side in left right; do
    if part "real-cut-$side"; then
      seg --data-root "data/real_ct_totalseg_cut_$side" --split all --card-key "real_ct_cut_$side" \
        --out "docs/evaluation/sdseg-real-ct-cut-$side" \
        --command-note "The two real CTs (data-real-ct) with 40 % of the field removed on the patient's $side (data-cut)."
    fi
  done
  lesion_reports
  if part sdseg-grids; then
    "$PY" -m training evaluate spacing --data-root Resources/SampleData --model sdseg-tiny-phantom \
      --out docs/evaluation/spacing/sdseg --precision fp32
    "$PY" -m training evaluate spacing --data-root data/real_ct_totalseg --model sdseg-tiny-phantom \
      --out docs/evaluation/spacing/sdseg-real-ct --precision fp32
  fi
fi
if [[ $what == sdseg-v9 ]]; then
  v8="$RUNS/sdseg-0.8.0-bundled"
  bundled_at "$SDSEG_V8_COMMIT" "$v8"
  train --recipe sdseg --set data_root=data/btcv_phantoms_v9 --set cache_dir=cache/sdseg-v9 --set version=0.9.0 \
    --optimizer adamw --lr-schedule cosine --set stage=ldm --set init="$v8" --set finetune=true --set latent_targets=false \
    --set train_mask_decoder=true --set mask_loss_weight=10.0 --set last_step_fraction=1.0 --out-dir "$RUNS/sdseg-v9" \
    --batch-size 8 --lr 1e-4 --warmup-steps 20 --max-steps 100000 --fit-to-budget 20 --time-budget "$SDSEG_V9_SECONDS" \
    --device cpu
  export_model "$RUNS/sdseg-v9" "$RUNS/sdseg-v9-tiny-phantom" --raw-weights --dtype float16 --inference-only
fi
# ae-probe-z4 / ae-probe-z8: how far the tiny mask autoencoder's round trip goes with more training than the 150 steps
# the bundled union model's got (0.1.0), with its 4 latent channels and with 8 (the rest of "tiny" alike); the two run
# side by side (THREADS=1 each), each cosine fitted to AE_PROBE_SECONDS; then `python -m training roundtrip` on the
# in-distribution test split. A probe for the next architecture, not a bundled model.
if [[ $what == ae-probe-z4 || $what == ae-probe-z8 ]]; then
  channels=${what#ae-probe-z}
  tiny_z=$("$PY" -c "import json, sys; from MedDiffusionExtension.models import SDSEG_CONFIGS as c
print(json.dumps({**c['tiny'], 'latent_channels': int(sys.argv[1])}))" "$channels")
  train --recipe sdseg --set data_root=data/btcv_phantoms_v6 --set cache_dir=cache/sdseg-v6 --set "architecture=$tiny_z" \
    --set stage=autoencoder --optimizer adamw --lr-schedule cosine --batch-size 8 --lr 1e-3 --warmup-steps 20 \
    --max-steps 100000 --fit-to-budget 20 --time-budget "${AE_PROBE_SECONDS:-1200}" --device cpu --out-dir "$RUNS/$what"
  export_model "$RUNS/$what" "$RUNS/$what/model"
  "$PY" -m training roundtrip --model "$RUNS/$what/model" --data-root data/btcv_phantoms_v2 --cache-dir cache/sdseg-v2 \
    --split test --out "docs/evaluation/sdseg/roundtrip-$what.json"
fi
if [[ $what == cdm-v4 ]]; then
  [[ -f $RUNS/cdm-mdn-v3/model/model.safetensors ]] || export_model "$RUNS/cdm-mdn-v3" "$RUNS/cdm-mdn-v3/model"
  train "${cdm_v3_common[@]}" --set version=0.4.0 --set stage=cunet --set init="$RUNS/cdm-mdn-v3/model" --out-dir "$RUNS/cdm-cunet-v4" \
    --max-steps ${CDM_CUNET_V4_STEPS:-550} --time-budget $CDM_V4_CUNET_SECONDS --batch-size 12 --lr 3e-4 --warmup-steps 20
  export_model "$RUNS/cdm-cunet-v4" "$RUNS/cdm-cunet-v4/model" --raw-weights
  train "${cdm_v3_common[@]}" --set version=0.4.0 --set stage=mdn --set init="$RUNS/cdm-cunet-v4/model" --out-dir "$RUNS/cdm-mdn-v4" \
    --max-steps ${CDM_MDN_V4_STEPS:-300} --time-budget $CDM_V4_MDN_SECONDS --batch-size 64 --lr 2e-4 --warmup-steps 20
  export_model "$RUNS/cdm-mdn-v4" "$RUNS/cdm-v4-tiny-phantom" --dtype float16
fi
if [[ $what == cdm-v4-unet ]]; then
  train "${cdm_v3_common[@]}" --set stage=unet --set name=cunet-m1-tiny-phantom --set init="$RUNS/cunet-m1-v3-tiny-phantom" \
    --out-dir "$RUNS/cdm-unet-v4" --max-steps ${CDM_UNET_V4_STEPS:-1000} --time-budget $(( CDM_V4_CUNET_SECONDS + CDM_V4_MDN_SECONDS )) \
    --batch-size 12 --lr 4e-4 --warmup-steps 20 --ema-decay 0.995
  export_model "$RUNS/cdm-unet-v4" "$RUNS/cunet-m1-v4-tiny-phantom" --raw-weights
fi

if [[ $what == eval-v2 || $what == eval-v3 || $what == eval-v4 || $what == eval-v5 ]]; then
  # The tables in docs/evaluation: in-distribution test split (and the cards' metrics), the shifted set, the grids,
  # for the bundled CDM and union SDSeg against their UNet baselines: those of 0.2.0 (eval-v2) or those continued
  # beside the 0.3.0 / 0.4.0 / 0.5.0 training (eval-v3 / eval-v4 / eval-v5, after each export was copied to
  # Resources/Models; eval-v5 is for the union SDSeg: its cdm parts would use the M1 UNet of eval-v4).
  # SET=<part> runs one part (sdseg-in, sdseg-shifted, sdseg-grids, cdm-in, cdm-shifted, cdm-grids), e.g. two side
  # by side. From eval-v4 the SDSeg reports add a row that keeps labels outside the body (the earlier protocol).
  segunet=$RUNS/segunet-tiny-phantom; m1=$RUNS/cunet-m1-tiny-phantom; body_row=()
  [[ $what == eval-v3 ]] && { segunet=$RUNS/segunet-v3-tiny-phantom; m1=$RUNS/cunet-m1-v3-tiny-phantom; }
  [[ $what == eval-v4 ]] && { segunet=$RUNS/segunet-v4-tiny-phantom; m1=$RUNS/cunet-m1-v4-tiny-phantom; body_row=(--outside-body-row); }
  [[ $what == eval-v5 ]] && { segunet=$RUNS/segunet-v5-tiny-phantom; m1=$RUNS/cunet-m1-v4-tiny-phantom; body_row=(--outside-body-row); }
  evaluate() { "$PY" -m training evaluate "$@"; }
  in_note="Phantoms of randomized acquisitions (profile train)."
  shifted_note="Held-out acquisitions (profile shifted), other subjects."
  if part sdseg-in; then
    evaluate segmentation --data-root data/btcv_phantoms_v2 --model sdseg-tiny-phantom --baseline "$segunet" \
      --out docs/evaluation/sdseg --update-card --core "${body_row[@]}" --command-note "$in_note"
  fi
  if part sdseg-shifted; then
    evaluate segmentation --data-root data/btcv_phantoms_shifted --split all --core --model sdseg-tiny-phantom \
      --baseline "$segunet" --out docs/evaluation/sdseg-shifted --update-card --card-key shifted "${body_row[@]}" \
      --command-note "$shifted_note"
  fi
  if part cdm-in; then
    evaluate translation --data-root data/brats_phantoms_v2 --model cdm-tiny-phantom --baseline "$m1" \
      --out docs/evaluation/cdm --update-card --core --command-note "$in_note"
  fi
  if part cdm-shifted; then
    evaluate translation --data-root data/brats_phantoms_shifted --split all --core --model cdm-tiny-phantom \
      --baseline "$m1" --out docs/evaluation/cdm-shifted --update-card --card-key shifted --command-note "$shifted_note"
  fi
  if part sdseg-grids; then
    evaluate spacing --data-root Resources/SampleData --model sdseg-tiny-phantom --out docs/evaluation/spacing/sdseg
  fi
  if part cdm-grids; then
    evaluate spacing --data-root Resources/SampleData --model cdm-tiny-phantom --out docs/evaluation/spacing/cdm
  fi
fi

# ---------------------------------------------------------------------------------------------------------------
# Multi-organ SDSeg (sdseg-organs-tiny-phantom): 13 BTCV organ classes in one single-step pass. Two mask encodings
# are trained the same way for the design comparison (docs/evaluation/sdseg-organs): "onehot" (14 channels) and
# "analog_bits" (4 channels). Both warm-start from the bundled 0.2.0 union model: every tensor whose shape fits
# (the CT vision encoder, the denoiser, the inner autoencoder layers); the autoencoder learns the organ classes
# first, then the vision encoder and denoiser learn the new latents. The multi-class UNet baseline warm-starts the
# same way from the 0.2.0 union SegUNet ($RUNS/segunet-tiny-phantom, written by sdseg-v2) and trains for the same
# wall time. The three chains run side by side (THREADS=1 each), on the same randomized data as 0.2.0; the step
# counts are what fits those times on a 2-core CPU, so that each cosine schedule ends near its time budget.
# Not enough on its own: at these budgets the autoencoders reconstruct only the largest organs (docs/decisions.md,
# "Multi-organ SDSeg"); organs-v3 below continues the one-hot autoencoder and trains the bundled organ model.
ORGANS=${ORGANS:-[1,2,3,4,5,6,7,8,9,10,11,12,13]}
organs_common=(--recipe sdseg --set data_root=data/btcv_phantoms_v2 --set cache_dir=cache/sdseg-v2 --set version=0.1.0
               --set "organs=$ORGANS" --optimizer adamw --lr-schedule cosine --batch-size 8)
if [[ $what == organs-v2-onehot || $what == organs-v2-bits ]]; then
  encoding=onehot; [[ $what == organs-v2-bits ]] && encoding=analog_bits
  run=$RUNS/sdseg-organs-$encoding
  train "${organs_common[@]}" --set mask_encoding=$encoding --set stage=autoencoder --set warm_start=true \
    --set init=Resources/Models/sdseg-tiny-phantom --out-dir "$run-ae" --max-steps ${ORGANS_AE_STEPS:-400} \
    --time-budget ${ORGANS_AE_SECONDS:-800} --lr 1e-3 --warmup-steps 20
  export_model "$run-ae" "$run-ae/model"
  train "${organs_common[@]}" --set mask_encoding=$encoding --set stage=ldm --set keep_vision_encoder=true \
    --set init="$run-ae/model" --set name=sdseg-organs-tiny-phantom --out-dir "$run-ldm" --max-steps ${ORGANS_LDM_STEPS:-350} \
    --time-budget ${ORGANS_LDM_SECONDS:-2500} --lr 4e-4 --warmup-steps 30 --ema-decay 0.995
  # ... resumed on the same cosine schedule for more wall time (the first run shared the 2 cores with other work).
  train "${organs_common[@]}" --set mask_encoding=$encoding --set stage=ldm --set keep_vision_encoder=true \
    --set init="$run-ae/model" --set name=sdseg-organs-tiny-phantom --out-dir "$run-ldm" --resume auto \
    --max-steps ${ORGANS_LDM_STEPS:-350} --time-budget ${ORGANS_MORE_SECONDS:-1800} --lr 4e-4 --warmup-steps 30 --ema-decay 0.995
  export_model "$run-ldm" "$RUNS/sdseg-organs-$encoding-tiny-phantom"
fi
if [[ $what == organs-v2-unet ]]; then
  train "${organs_common[@]}" --set stage=segunet --set warm_start=true --set init="$RUNS/segunet-tiny-phantom" \
    --set name=segunet-organs-tiny-phantom --out-dir "$RUNS/segunet-organs" --max-steps ${ORGANS_UNET_STEPS:-210} \
    --time-budget $(( ${ORGANS_AE_SECONDS:-800} + ${ORGANS_LDM_SECONDS:-2500} )) --lr 1e-3 --warmup-steps 20 --ema-decay 0.995
  train "${organs_common[@]}" --set stage=segunet --set warm_start=true --set init="$RUNS/segunet-tiny-phantom" \
    --set name=segunet-organs-tiny-phantom --out-dir "$RUNS/segunet-organs" --resume auto --max-steps ${ORGANS_UNET_STEPS:-210} \
    --time-budget ${ORGANS_MORE_SECONDS:-1800} --lr 1e-3 --warmup-steps 20 --ema-decay 0.995
  export_model "$RUNS/segunet-organs" "$RUNS/segunet-organs-tiny-phantom"
fi

# The bundled sdseg-organs-tiny-phantom 0.1.0 (organs-v3, after organs-v2-onehot's autoencoder stage): the one-hot
# autoencoder trained on (2100 s, 2 threads) until its round trip carries every organ (python -m training roundtrip),
# then the latent stage with the decoded-mask loss (mask_loss_weight: cross-entropy + soft Dice of the decoded
# one-step estimate, so that small organs count) for ORGANS_LDM3_SECONDS; side by side, organs-v3-unet continues
# the multi-class UNet baseline for the same wall time (THREADS=1 each).
ORGANS_LDM3_SECONDS=${ORGANS_LDM3_SECONDS:-4800}
if [[ $what == organs-v3 ]]; then
  run=$RUNS/sdseg-organs-onehot
  run_stage ae && train "${organs_common[@]}" --set mask_encoding=onehot --set stage=autoencoder --set warm_start=true \
    --set init="$run-ae/model" --out-dir "$run-ae2" --max-steps ${ORGANS_AE2_STEPS:-3000} \
    --time-budget ${ORGANS_AE2_SECONDS:-2100} --lr 1e-3 --warmup-steps 20
  [[ -z $from ]] && export_model "$run-ae2" "$run-ae2/model"
  run_stage ldm && train "${organs_common[@]}" --set mask_encoding=onehot --set stage=ldm --set keep_vision_encoder=true \
    --set init="$run-ae2/model" --set mask_loss_weight=1.0 --set name=sdseg-organs-tiny-phantom --out-dir "$run-ldm3" \
    --max-steps ${ORGANS_LDM3_STEPS:-500} --time-budget $ORGANS_LDM3_SECONDS --lr 4e-4 --warmup-steps 30
  export_model "$run-ldm3" Resources/Models/sdseg-organs-tiny-phantom --raw-weights --dtype float16 --inference-only
fi
if [[ $what == organs-v3-unet ]]; then
  train "${organs_common[@]}" --set stage=segunet --set warm_start=true --set init="$RUNS/segunet-organs-tiny-phantom" \
    --set name=segunet-organs-tiny-phantom --out-dir "$RUNS/segunet-organs3" --max-steps ${ORGANS_UNET3_STEPS:-600} \
    --time-budget $ORGANS_LDM3_SECONDS --lr 5e-4 --warmup-steps 20 --ema-decay 0.995
  export_model "$RUNS/segunet-organs3" "$RUNS/segunet-organs3-tiny-phantom"
fi

# organ SDSeg 0.2.0 (organs-v4): the bundled 0.1.0 (inference-only) trained further as the union model 0.7.0 was: the
# single step end to end (pure noise at T - 1, the decoded-mask loss: cross-entropy + soft Dice over the 13 organs,
# the mask decoder trained too), on data-v6's subjects (positive oral contrast in 6 of 10), its cosine fitted to
# ORGANS_V4_SECONDS on this 2-core CPU. No UNet beside it (the 2 cores were its). eval-organs-v4 scores it against
# 0.1.0 (as extracted from git), after the export was copied to Resources/Models.
ORGANS_V1_COMMIT=fa0f382  # a commit that holds the bundled organ model 0.1.0
ORGANS_V2_COMMIT=300b0f5  # the commit that bundled the organ model 0.2.0
ORGANS_V3_COMMIT=0ef8afe  # the commit that bundled the organ model 0.3.0
# organ SDSeg 0.3.0 (organs-v5): 0.2.0 trained further the same way on data-v9 (half of the subjects scanned
# abdomen-pelvis, see sdseg-v9), lr 1e-4, for ORGANS_V5_SECONDS; eval-organs-v5 adds the abdomen-pelvis set.
# organ SDSeg 0.4.0 (organs-v6): 0.3.0 trained further the same way on the same data, alone on the 2 cores (0.3.0's
# run shared them and was stopped by its budget at 292 steps), lr 2e-4 as organs-v4, for ORGANS_V6_SECONDS;
# eval-organs-v6 adds the lesion stress sets (data-lesions).
if [[ $what == organs-v4 || $what == organs-v5 || $what == organs-v6 ]]; then
  if [[ $what == organs-v4 ]]; then
    start=0.1.0 commit=$ORGANS_V1_COMMIT version=0.2.0 data=v6 lr=2e-4 seconds=${ORGANS_V4_SECONDS:-2700}
  elif [[ $what == organs-v5 ]]; then
    start=0.2.0 commit=$ORGANS_V2_COMMIT version=0.3.0 data=v9 lr=1e-4 seconds=${ORGANS_V5_SECONDS:-2400}
  else
    start=0.3.0 commit=$ORGANS_V3_COMMIT version=0.4.0 data=v9 lr=2e-4 seconds=${ORGANS_V6_SECONDS:-4800}
  fi
  init="$RUNS/sdseg-organs-$start-bundled"
  bundled_at "$commit" "$init" sdseg-organs-tiny-phantom
  train --recipe sdseg --set data_root=data/btcv_phantoms_$data --set cache_dir=cache/sdseg-$data --set version=$version \
    --set "organs=$ORGANS" --set mask_encoding=onehot --set name=sdseg-organs-tiny-phantom --set stage=ldm \
    --set init="$init" --set finetune=true --set latent_targets=false --set train_mask_decoder=true \
    --set mask_loss_weight=1.0 --set last_step_fraction=1.0 --optimizer adamw --lr-schedule cosine --batch-size 8 \
    --lr $lr --warmup-steps 20 --max-steps 100000 --fit-to-budget 20 --time-budget "$seconds" \
    --device cpu --out-dir "$RUNS/$what"
  export_model "$RUNS/$what" "$RUNS/sdseg-$what-tiny-phantom" --raw-weights --dtype float16 --inference-only
fi
# eval-organs-v4 / -v5 / -v6: the bundled organ model (after the export was copied to Resources/Models) against its
# start (0.1.0 / 0.2.0 / 0.3.0, as extracted from git).
if [[ $what == eval-organs-v4 || $what == eval-organs-v5 || $what == eval-organs-v6 ]]; then
  start=0.1.0; [[ $what == eval-organs-v5 ]] && start=0.2.0; [[ $what == eval-organs-v6 ]] && start=0.3.0
  organs_eval() { "$PY" -m training evaluate segmentation --model Resources/Models/sdseg-organs-tiny-phantom --core --no-memory \
    --update-card --precision fp32 --compare "$RUNS/sdseg-organs-$start-bundled" "$@"; }
  if part organs-in; then
    organs_eval --data-root data/btcv_phantoms_v2 --out docs/evaluation/sdseg-organs \
      --command-note "Phantoms of randomized acquisitions (profile train)."
  fi
  if part organs-shifted; then
    organs_eval --data-root data/btcv_phantoms_shifted --split all --out docs/evaluation/sdseg-organs-shifted \
      --card-key shifted --command-note "Held-out acquisitions (profile shifted), other subjects."
  fi
  if [[ $what != eval-organs-v4 ]] && part organs-pelvis; then
    organs_eval --data-root data/btcv_phantoms_pelvis --split all --out docs/evaluation/sdseg-organs-pelvis \
      --card-key abdomen_pelvis --command-note "Abdomen-pelvis scans (data-v9: --pelvis, profile train), other subjects than training."
  fi
  if [[ $what == eval-organs-v6 ]] && part organs-val; then  # the choice to ship: the validation subjects (data-v8)
    "$PY" -m training evaluate segmentation --data-root data/btcv_phantoms_val --split all --core --no-memory --precision fp32 \
      --model "$RUNS/sdseg-organs-v6-tiny-phantom" --compare "$RUNS/sdseg-organs-0.3.0-bundled" --out "$RUNS/eval-organs-v6-val" \
      --command-note "Validation phantoms (data-v8)."
  fi
  if [[ $what == eval-organs-v6 ]] && part organs-lesions; then
    organs_eval --data-root data/btcv_phantoms_v2_lesions --out docs/evaluation/sdseg-organs-lesions \
      --card-key lesions --command-note "$LESIONS_NOTE"
  fi
  if [[ $what == eval-organs-v6 ]] && part organs-lesions-shifted; then
    organs_eval --data-root data/btcv_phantoms_shifted_lesions --split all --out docs/evaluation/sdseg-organs-lesions-shifted \
      --card-key lesions_shifted --command-note "$LESIONS_SHIFTED_NOTE"
  fi
fi

# ---------------------------------------------------------------------------------------------------------------
# EDTS-Trans T1 -> T2 (edts-tiny-phantom), on the randomized phantoms of 0.2.0:
#   bash training/train_bundled.sh edts-v2           the bundled model: RegN, then the refiner with RegN frozen
#   bash training/train_bundled.sh edts-v2-no-ssim   the ablation "without SSIM loss" (ssim_weight=0), same stages
#   bash training/train_bundled.sh edts-v2-unet      the plain UNet baseline T1 -> T2, same loss, the chain's time
# (the three can run side by side, THREADS=1 each). The paper trains jointly for 25k iterations at batch 1; on a CPU
# the two networks are trained one after the other (stage=joint exists for longer runs), with the paper's learning
# rate 2e-4 decaying to 1e-6 on a cosine. No EMA (short runs on a cosine): exports take the raw weights. The step
# counts are what the bundled 0.1.0 ran, side by side on a 2-core CPU (RegN 150 steps in 1076 s, refiner 220 in
# 730 s, the UNet 450 in 1470 s: each stopped by its step count before its time budget).
edts_common=(--recipe edts --set data_root=data/brats_phantoms_v2 --set cache_dir=cache/edts-v2 --optimizer adamw
             --lr 2e-4 --min-lr 1e-6 --lr-schedule cosine --warmup-steps 20 --batch-size 8)
EDTS_REGN_SECONDS=${EDTS_REGN_SECONDS:-1200}
EDTS_REFINER_SECONDS=${EDTS_REFINER_SECONDS:-1800}
if [[ $what == edts-v2 || $what == edts-v2-no-ssim ]]; then
  if [[ $what == edts-v2 ]]; then
    variant=(); run=$RUNS/edts; final=Resources/Models/edts-tiny-phantom; final_flags=(--dtype float16)
  else
    variant=(--set ssim_weight=0 --set name=edts-tiny-phantom-no-ssim); run=$RUNS/edts-no-ssim
    final=$RUNS/edts-tiny-phantom-no-ssim; final_flags=()
  fi
  run_stage regn && train "${edts_common[@]}" "${variant[@]}" --set stage=regn --out-dir "$run-regn" \
    --max-steps ${EDTS_REGN_STEPS:-150} --time-budget $EDTS_REGN_SECONDS
  [[ -z $from ]] && export_model "$run-regn" "$run-regn/model" --raw-weights
  run_stage refiner && train "${edts_common[@]}" "${variant[@]}" --set stage=refiner --set init="$run-regn/model" \
    --out-dir "$run-refiner" --max-steps ${EDTS_REFINER_STEPS:-220} --time-budget $EDTS_REFINER_SECONDS
  export_model "$run-refiner" "$final" --raw-weights "${final_flags[@]}"
fi
if [[ $what == edts-v2-unet ]]; then
  train "${edts_common[@]}" --set stage=unet --set name=unet-t2-tiny-phantom --out-dir "$RUNS/edts-unet" \
    --max-steps ${EDTS_UNET_STEPS:-450} --time-budget $(( EDTS_REGN_SECONDS + EDTS_REFINER_SECONDS ))
  export_model "$RUNS/edts-unet" "$RUNS/unet-t2-tiny-phantom" --raw-weights
fi
