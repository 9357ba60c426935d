#!/bin/sh
# One-shot trainer of the compose stack and the Kubernetes Job: trains a bundle into
# $UBS_BUNDLE_DIR from the mounted data folder, unless a bundle is already there.
#   UBS_BUNDLE_DIR  where the bundle goes (default /bundles/default)
#   UBS_TRAIN_DATA  the data folder (default /data); ml-100k/u.data there is used,
#                   otherwise the synthetic generator (a smoke-test model, not a good one)
#   UBS_RETRAIN=1   train again even when a bundle exists
# Extra arguments go to `ubs-embed train` (e.g. --epochs 3).
set -eu

out="${UBS_BUNDLE_DIR:-/bundles/default}"
data="${UBS_TRAIN_DATA:-/data}"

if [ -f "$out/model_version" ] && [ "${UBS_RETRAIN:-0}" != "1" ]; then
  echo "bundle $out exists (model_version $(cat "$out/model_version")); set UBS_RETRAIN=1 to train again"
  exit 0
fi

# Train into a fresh folder beside the target and swap it in at the end, so a
# service reading $out never sees a half-written bundle.
work="$out.partial"
rm -rf "$work"
mkdir -p "$(dirname "$out")"
if [ -f "$data/ml-100k/u.data" ]; then
  echo "training on MovieLens 100K ($data/ml-100k)"
  ubs-embed train --data "$data/ml-100k" --format movielens --out "$work" "$@"
else
  echo "no $data/ml-100k/u.data: training on the synthetic generator (not a quality model)"
  ubs-embed train --format synthetic --out "$work" "$@"
fi
rm -rf "$out.old"
if [ -d "$out" ]; then mv "$out" "$out.old"; fi
mv "$work" "$out"
rm -rf "$out.old"
echo "bundle $out ready (model_version $(cat "$out/model_version"))"
