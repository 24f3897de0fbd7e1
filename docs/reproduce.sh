#!/usr/bin/env bash
# How the README's report and activation pictures under docs/ were made (from the repository root, on the
# shared images at ../shared/data/imagenet-val-1024). Slow on 2 CPU cores: about an hour in all.
set -euo pipefail
python3 -m robustness.cli run --model efficientnet_lite0 --images 100 --output runs/readme/lite0 --no-progress --thresholds thresholds.yaml
# A screenshot of the report in headless Chromium (the same flags the browser test uses).
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --disable-sync --no-first-run --user-data-dir="$(mktemp -d)" --hide-scrollbars --window-size=1250,2600 \
    --screenshot=docs/report.png "file://$PWD/runs/readme/lite0/report.html"
for model in efficientnet_lite0 efficientnet_lite1 efficientnet_lite2 squeezenet1_0_caffe; do
    python3 -m robustness.cli activations --model "$model" --images 8 --output "runs/readme/activations-$model"
done
# The README's feature-map figures use matplotlib's public-domain sample photograph (ImageNet images may
# not be copied into a repository).
hopper=$(python3 -c "import matplotlib.cbook as c; print(c.get_sample_data('grace_hopper.jpg', asfileobj=False))")
python3 -m robustness.cli activations --model efficientnet_lite0 --image "$hopper" --output runs/readme/activations-hopper
