#!/usr/bin/env bash
# Issue 3 on a lent GPU in one run of under 10 minutes: the shipped Crafter model fine-tuned with the
# self-distillation recipe and dit.novel_weight in several variants side by side
# (the novel-token weight that teaches events without inventing them; docs/results.md, Crafter: Novel tokens).
# The training data is collected there (16 cores: the four collections the CPU runs used, same commands and
# PYTHONHASHSEED, and since the thirty-fourth session a fifth of sleeps and wakings, `sleep=0.1`, for the learned
# world's sleep that never ends: docs/results.md, Training an agent in the learned world), since 230 MB of episodes
# do not travel (64 MiB at most).
#   here:   bash ../shared/device/wheels.sh                    (the wheels the device lacks, into .whl/)
#   device: run(command="WEIGHTS=5 CLOCK=5 TICKS=5 EVENT_SHARE=0.02 bash docs/device_train.sh", carry=[".whl"], timeout_s=595)
# CLOCK="5" adds, per weight listed, a run nWc that also reads the game's clock (dit.clock_period=300, docs/results.md:
# The game's clock as an input): the dawn collections train it to bring the day back, which no CPU run could.
# TICKS="5" adds, per weight listed, a run nWt with ticks (dit.ticks=true dit.tick_weight=3: the collections record
# the counters since the thirty-eighth session; docs/results.md, "Ticks": a CPU fine-tune never learnt to show them).
# Then (HEADS=1, the default) each run is grafted into the shipped bundle and its heads are refit and calibrated
# there (`worldsim heads ... calibrate=true device=cuda`: two hours of this CPU for one model), until HEADS_END s.
# Back in $OUT: wm_<run>.safetensors + the run's bundle.json per run (graft with docs/graft_world_model.py),
# wm_<run>_heads.safetensors where the heads' refit finished in time, logs.tgz (logs/bundle_<run>_heads.json is that
# model's whole bundle.json: with wm_<run>_heads.safetensors as world_model.safetensors in a copy of the shipped
# bundle it is the model to evaluate). SMOKE=1 runs it small on a CPU (no install, no GPU): with WEIGHTS=5 CLOCK=5
# END=130, 508 s on the 2-core EPYC (2026-12-04), the heads' refits 411 s of it.
# With the fifth collection (2026-12-05, a slow hour): WEIGHTS=5 CLOCK= HEADS=0 END=300, 273 s, collecting 165 s of
# it, then 40 training steps on all five collections and the bundle written.
# Run once (2026-12-04, twenty-fifth session, one H200): 434 s, four fine-tunes of 2,812-2,990 steps. That run also
# benched beside the collectors, which timed out above batch 1; the bench is docs/device_bench.sh's alone since.
# docs/results.md: the first GPU session.
set -uo pipefail
T0=$(date +%s)
W=/tmp/w
WEIGHTS=${WEIGHTS:-"1 5 10 20"}
CLOCK=${CLOCK:-""}         # weights that also run with the clock, as run nWc
TICKS=${TICKS:-""}         # weights that also run with ticks (the counters' moves drawn and shown), as run nWt
RUNS=""; for w in $WEIGHTS; do RUNS="$RUNS n$w"; done; for w in $CLOCK; do RUNS="$RUNS n${w}c"; done
for w in $TICKS; do RUNS="$RUNS n${w}t"; done
END=${END:-420}            # seconds after the start by which every training run has written its bundle
HEADS=${HEADS:-1}
EVENT_SHARE=${EVENT_SHARE:-""}  # e.g. 0.02: every run also draws windows ending on rare events at about that share
# each (dit.event_share; docs/results.md, "Waking from real frames": 732 CPU steps taught the waking that way)
HEADS_END=${HEADS_END:-575}  # seconds after the start by which the heads' refits are stopped
REPO=$(pwd)
mkdir -p $W/logs "$OUT"
el() { echo $(( $(date +%s) - T0 )); }
# seconds until the time $1 (after the start), $2 at least: a timeout never goes negative when a stage before overran
left() { local t=$(($1 - $(el))); echo $(( t < $2 ? $2 : t )); }
if [ "${SMOKE:-0}" = 1 ]; then
  EPS=(8 8 4 4 4); EXTRA="dit.batch_size=4 threads=1"; HEADS_EXTRA="batch_size=16 steps=200"
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . || exit 1
  export PYTHONPATH=/tmp/site
  EPS=(320 320 96 128 96); EXTRA="dit.batch_size=128 threads=3"; HEADS_EXTRA="device=cuda batch_size=512"
fi
export SDL_VIDEODRIVER=dummy PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 OMP_NUM_THREADS=3
cd $W  # import the installed copy, not the source folder
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; python3 -c "import torch; print(torch.__version__)"; } \
  > logs/machine.txt 2>&1
ws() { python3 -m worldsim.cli "$@"; }
# 1. the five collections, 17 worker processes in all
c=0
for spec in "crafter_detour 5 10000" "crafter_ends 5 30000" "crafter_dawn 2 50000 clock_start=[150,290]" \
            "crafter_dawn2 3 60000 clock_start=[235,295]" "crafter_sleep 2 70000 sleep=0.1"; do
  set -- $spec
  PYTHONHASHSEED=0 ws collect out=$W/data/$1 episodes=${EPS[$c]} workers=$2 seed=$3 ${4:-} > logs/collect_$1.txt 2>&1 &
  c=$((c + 1))
done
echo "[$(el) s] collecting"
wait
echo "[$(el) s] collected"; tail -n 2 logs/collect_*.txt
# 2. one fine-tune per run (novel-token weight, with or without the clock), side by side on the one GPU; the
#    cosine runs over the time left
DATA="data=[$W/data/crafter_detour,$W/data/crafter_ends,$W/data/crafter_dawn,$W/data/crafter_dawn2,$W/data/crafter_sleep]"
MIN=$(python3 -c "print(round(max(0.2, ($END - $(el) - 75) / 60), 2))")
echo "[$(el) s] training$RUNS for $MIN minutes each"
for r in $RUNS; do
  w=${r#n}; w=${w%c}; w=${w%t}; more=(); [ "$r" = "n${w}c" ] && more=(dit.clock_period=300)
  [ "$r" = "n${w}t" ] && more=(dit.ticks=true dit.tick_weight=3)
  [ -n "$EVENT_SHARE" ] && more+=(dit.event_share=$EVENT_SHARE)
  args=("$DATA" run=$W/runs/$r init=crafter diffusion.action_dropout=0.15 diffusion.sampling_steps=1 dit.lr=2.5e-4
        dit.warmup=100 dit.steps=200000 dit.minutes=$MIN dit.schedule=minutes dit.still_weight=2 dit.distill_guidance=1
        dit.still_real=true dit.change_real=true dit.novel_weight=$w checkpoint_every=2000 log_every=100 "${more[@]}" $EXTRA)
  # torch.compile has not run here before: if it fails, the same run again without it (it resumes)
  ( timeout $(left $((END + 20)) 30) python3 -m worldsim.cli train "${args[@]}" > logs/train_$r.txt 2>&1 \
    || { echo "RETRY compile=false" >> logs/train_$r.txt;
         timeout $(left $((END + 20)) 30) python3 -m worldsim.cli train "${args[@]}" compile=false >> logs/train_$r.txt 2>&1; }
    # killed before its bundle: write one from the last checkpoint
    [ -f runs/$r/bundle/world_model.safetensors ] || timeout 45 python3 -m worldsim.cli train "${args[@]}" export_only=true \
      >> logs/train_$r.txt 2>&1 ) &
done
wait
echo "[$(el) s] trained"
for r in $RUNS; do
  tail -n 3 logs/train_$r.txt
  cp runs/$r/bundle/world_model.safetensors $OUT/wm_$r.safetensors && cp runs/$r/bundle/bundle.json logs/bundle_$r.json
done
# 3. each run in the shipped bundle's setting (snap, map memory, terrain prior), its heads refit on what they read
#    there and the termination head calibrated on the test splits (docs/results.md: Reward and termination heads)
if [ "$HEADS" = 1 ]; then
  echo "[$(el) s] heads"
  for r in $RUNS; do
    ( python3 "$REPO/docs/graft_world_model.py" runs/$r/bundle runs/${r}_ship > logs/heads_$r.txt 2>&1 \
      && timeout $(left $HEADS_END 1) python3 -m worldsim.cli heads bundle=runs/${r}_ship \
           "data=[$W/data/crafter_detour,$W/data/crafter_ends,$W/data/crafter_sleep]" calibrate=true $HEADS_EXTRA >> logs/heads_$r.txt 2>&1 \
      && cp runs/${r}_ship/world_model.safetensors $OUT/wm_${r}_heads.safetensors \
      && cp runs/${r}_ship/bundle.json logs/bundle_${r}_heads.json ) &
  done
  wait
  echo "[$(el) s] heads done"; for r in $RUNS; do tail -n 1 logs/heads_$r.txt; done
fi
tar czf $OUT/logs.tgz logs
echo "[$(el) s] done"; ls -l $OUT
