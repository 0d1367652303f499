#!/usr/bin/env bash
# Issue 3's GPU figures (>= 50,000 env-steps/s batched, >= 500 at batch 1) in one run on a lent device machine.
# Not run yet: no GPU has been lent to this project. Prepared so a session that gets one spends its minutes
# measuring, not setting up.
#   here:   bash ../shared/device/wheels.sh                    (the wheels the device lacks, into .whl/)
#   device: run(command="bash docs/device_bench.sh", carry=[".whl"], timeout_s=540)
# It writes $OUT/bench_gpu_fp32.json and $OUT/bench_gpu_bf16.json (worldsim bench's JSON, real Crafter beside).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# the project itself (its envs/ and agents/ folders become worldsim.envs and worldsim.agents when installed)
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site .
export PYTHONPATH=/tmp/site SDL_VIDEODRIVER=dummy
cd /tmp  # import the installed copy, not the source folder
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for amp in none bf16; do
  name=$([ "$amp" = none ] && echo fp32 || echo bf16)
  timeout 240 python3 -m worldsim.cli bench devices=[cuda] 'batch_sizes=[1,256,1024,4096]' steps=100 warmup=10 \
    real_steps=1000 amp=$amp out="$OUT/bench_gpu_$name.json" || echo "bench amp=$amp failed or timed out"
done
