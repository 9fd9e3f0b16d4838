#!/usr/bin/env bash
# The head-parameter study of the model card ("Prototype head: which settings matter"): `dspnet eval --sweep`
# over every head parameter on the CT liver, the 8 deep nuclei of the MRI crop and 15 AAL structures chosen by
# size alone (every 8th of the 112 in size order, 404 to 40,374 voxels). Writes one JSON per case to OUT.
# Usage: scripts/head_study.sh OUT [liver|nuclei|aal ...]   (~1 h per case set on one core; default: all)
set -euo pipefail
out=${1:?usage: head_study.sh OUT [liver|nuclei|aal ...]}; shift
cases=${*:-liver nuclei aal}
root=$(cd "$(dirname "$0")/.." && pwd)
dspnet=${DSPNET:-$root/target/release/dspnet}
shared=${SHARED:-$root/../shared/data}
mkdir -p "$out"
full=(--sweep max_num_sp=0,3,10 --sweep avg_sp_area=25,50,200,400 --sweep fg_thresh=0.5,0.75,0.99
      --sweep bg_thresh=0.5,0.75,0.99 --sweep val_wsize=1,4 --sweep alpha=0,0.5,1 --sweep alpha_bg=0,0.5,1
      --sweep w1_w2_w3=0:1:0,0.2:0.8:0.2,0.1:0.9:0.1,0.3:0.6:0.3 --sweep n_iter=1,20)
short=(--sweep max_num_sp=0,10 --sweep avg_sp_area=25,400 --sweep fg_thresh=0.5,0.99 --sweep bg_thresh=0.5,0.99
       --sweep val_wsize=1,4 --sweep alpha=0,1 --sweep alpha_bg=0,1 --sweep w1_w2_w3=0:1:0,0.1:0.9:0.1
       --sweep n_iter=1,20)
for c in $cases; do
  case $c in
    liver) "$dspnet" eval "$root/tests/data/ct-liver/image.nii.gz" --labels "$root/tests/data/ct-liver/labels.nii.gz" \
             --json "${full[@]}" > "$out/liver.json" ;;
    nuclei) "$dspnet" eval "$root/tests/data/mri-brain-aal/image.nii.gz" --labels "$root/tests/data/mri-brain-aal/labels.nii.gz" \
             --json "${full[@]}" > "$out/nuclei.json" ;;
    aal) "$dspnet" eval "$shared/mri-brain-aal-full/image.nii.gz" --labels "$shared/mri-brain-aal-full/labels.nii.gz" \
             --classes 109,79,36,87,53,73,65,49,99,93,14,48,82,3,8 --json "${short[@]}" > "$out/aal.json" ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
  esac
done
