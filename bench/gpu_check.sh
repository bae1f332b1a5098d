#!/usr/bin/env bash
# The GPU checks as one prepared run on a lent GPU machine (the session's `device` tool).
#
# Here, once (the GPU image has torch, torchvision, timm, opencv, scikit-image; not these two):
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/python -m pip wheel --no-deps -w .whl grad-cam==1.5.7 ttach==0.0.3
# Then one device call, carrying .whl, with a timeout that leaves room for one rerun:
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=420)
# It prints gpu_check=<ok|FAILED> maxdiff=... grid_vs_floor=... scorecam=... ablationcam=... memory_mb=... real_oom=...
# then bench/detection.py's box grid on the GPU (Faster R-CNN ResNet-50 FPN v2 at 800; issue 24):
# grid_vs_floor=... speedup_vs_reference=... switch_box_vs_floor=... switch_map_ms=...
# Both logs are also written under $OUT when the device tool sets it.
# Without a GPU, `.venv/bin/python bench/gpu_check.py --cpu` and `bench/detection.py --quick` dry-run them.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 CAM_EXPLORER_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
LOGS="${OUT:-/tmp}"
failed=0  # both run, whichever fails
python3 bench/gpu_check.py 2>&1 | tee "$LOGS/gpu_check.log" || failed=1
python3 bench/detection.py --repeats 3 2>&1 | tee "$LOGS/gpu_detection.log" || failed=1
exit $failed
