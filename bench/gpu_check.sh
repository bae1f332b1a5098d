#!/usr/bin/env bash
# The GPU checks as one prepared run on a lent GPU machine (the session's `device` tool).
#
# Here, once (the GPU image has torch, torchvision, timm, opencv, scikit-image; not these two):
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/python -m pip wheel --no-deps -w .whl grad-cam==1.5.7 ttach==0.0.3
# Then one device call, carrying .whl, with a timeout that leaves room for one rerun:
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=420)
# Its last line: gpu_check=<ok|FAILED> maxdiff=... grid_vs_floor=... scorecam=... ablationcam=... memory_mb=... real_oom=...
# Without a GPU, `.venv/bin/python bench/gpu_check.py --cpu` dry-runs the same script at small sizes.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 CAM_EXPLORER_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 bench/gpu_check.py
