#!/usr/bin/env bash
# Issue 3's GPU figures (>= 50,000 env-steps/s batched, >= 500 at batch 1) in one run of under 6 minutes on a lent
# device machine, where a step's time goes there (docs/step_profile.py under cProfile), and the fused Triton kernels
# (kernels=triton) checked against the references there (docs/kernels_check.py) and timed beside them.
#   here:   bash ../shared/device/wheels.sh                    (the wheels the device lacks, into .whl/)
#   device: run(command="bash docs/device_bench.sh", carry=[".whl"], timeout_s=480)
#   or only the kernels (about 4 minutes): run(command="ONLY='kern_check kern_b1 kern_b4096' bash docs/device_bench.sh", ...)
# Each setting is its own run with its own time limit, its figures printed as it ends (a run killed at its limit
# loses only its own); each log comes back in $OUT (NAME.txt).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site SDL_VIDEODRIVER=dummy PYTHONUNBUFFERED=1
R=$PWD; L=$OUT; mkdir -p /tmp/b; cd /tmp/b  # import the installed copy, not the source folder
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $L/machine.txt
B="devices=[cuda] real_steps=300 quantize=none"
run() {  # name, time limit, arguments; ONLY="name ..." runs just those (e.g. ONLY="kern_check kern_b1 kern_b4096")
  local name=$1 limit=$2; shift 2
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]] && return 0
  timeout $limit "$@" > $L/$name.txt 2>&1 || echo "$name: failed or timed out after $limit s" >> $L/$name.txt
  grep -h "^model\|^real\|ms/step\|timed out" $L/$name.txt | grep -v "^ " | head -4
}
run bf16_b1      40 python3 -m worldsim.cli bench $B amp=bf16 "batch_sizes=[1]" steps=100 warmup=10
run bf16_b4096   60 python3 -m worldsim.cli bench $B amp=bf16 "batch_sizes=[256,4096]" steps=10 warmup=3
run bf16_raw4096 45 python3 -m worldsim.cli bench $B amp=bf16 "batch_sizes=[4096]" steps=10 warmup=3 snap=false map_memory=false
run prof_b1      30 python3 $R/docs/step_profile.py cuda 1 50 amp=bf16
run prof_b1024   35 python3 $R/docs/step_profile.py cuda 1024 5 amp=bf16
run kern_check   60 python3 $R/docs/kernels_check.py cuda 64 20
run kern_b1      60 python3 -m worldsim.cli bench $B amp=bf16 "batch_sizes=[1]" steps=100 warmup=10 "kernels=[torch,triton]"
run kern_b4096   90 python3 -m worldsim.cli bench $B amp=bf16 "batch_sizes=[4096]" steps=10 warmup=3 snap=false map_memory=false "kernels=[torch,triton]"
