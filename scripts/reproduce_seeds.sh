#!/usr/bin/env bash
# Every registered seed of the long reproductions (issue 24), one run at a time on one torch thread, in an
# order that completes each paper's table before the next starts, then nowt's own fair ViT and GPT
# comparisons (issue 28). Finished runs are read, not retrained, and an interrupted one resumes from its
# checkpoint: after a stop, run this script again. Each pass rewrites every RESULTS.md it reaches: set
# NOWT_AKROUT_LOGS to a checkout of the authors' repository (github.com/makrout/Deep-Learning-without-Weight-Transport)
# or akrout2019's table loses its comparison with their logs (restore it with git checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
# Last, Bartunov et al.'s MNIST locally connected rows (seed 0 of every row finished 2026-12-05; seeds 1 and 2
# follow, one seed of every row before the next seed: about 4 h a row here).
for entry in akrout2019:akrout2019 nokland2016:nokland2016 biotorch-mnist:biotorch2021 \
             bartunov2018-mnist-fc:bartunov2018 vit-rules-fair:vit-rules-fair gpt-rules:gpt-rules \
             gpt-rules-wide:gpt-rules-wide vit-rules-fair-wide:vit-rules-fair-wide \
             bartunov2018-mnist-lc:bartunov2018/mnist-lc:--seeds=0 bartunov2018-mnist-lc:bartunov2018/mnist-lc:--seeds=1 \
             bartunov2018-mnist-lc:bartunov2018/mnist-lc:--seeds=2; do
  IFS=: read -r name folder extra <<< "$entry"
  echo "== $(date -u +%FT%TZ) $name"
  .venv/bin/nowt reproduce "$name" --out "results/$folder" --no-progress ${extra:+"$extra"} > /dev/null
done
