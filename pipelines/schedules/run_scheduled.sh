#!/usr/bin/env bash
# Scheduled pipeline run (cron or systemd): log, respect the work directory's lock, resume after a crash,
# keep each successful night's scorecard, exit non-zero when a stage fails.
#
# Settings (environment variables):
#   PIPELINE_CONFIG  pipeline YAML                   (default: configs/pipelines/era5_wb2_64x32.yaml)
#   WORKDIR          work directory, kept between runs (default: runs/scheduled)
#   REPO             checkout to run from             (default: the checkout holding this script)
#   DATA             store URL overriding data.path   (optional)
#   WINDOW_DAYS      rolling test window length in days (optional; with it the test split becomes
#   WINDOW_END       [WINDOW_END - WINDOW_DAYS, WINDOW_END], WINDOW_END default: yesterday, UTC)
#   EXTRA_ARGS       more arguments, e.g. "--set forecast.members=16"
#   GENCAST_RMMD     the command (default: gencast-rmmd on PATH)
#
# Exit codes: 0 done (or another run holds the lock: logged, nothing done); otherwise the pipeline's
# (1 a stage failed, 2 bad input or a stage refused its input). Unchanged stages are skipped, so a
# nightly run only retrains when the training data or configs change.
set -uo pipefail

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
PIPELINE_CONFIG=${PIPELINE_CONFIG:-configs/pipelines/era5_wb2_64x32.yaml}
WORKDIR=${WORKDIR:-runs/scheduled}
GENCAST_RMMD=${GENCAST_RMMD:-gencast-rmmd}
cd "$REPO" || exit 2
mkdir -p "$WORKDIR/scheduled-logs"
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
log="$WORKDIR/scheduled-logs/$stamp.log"

args=(pipeline run "$PIPELINE_CONFIG" --workdir "$WORKDIR" --resume)
[[ -n "${DATA:-}" ]] && args+=(--data "$DATA")
if [[ -n "${WINDOW_DAYS:-}" ]]; then
  end=${WINDOW_END:-$(date -u -d yesterday +%F)}
  start=$(date -u -d "$end - $WINDOW_DAYS days" +%F)
  args+=(--set "data.overrides.splits.test={start: \"$start\", end: \"$end\"}")
fi
# shellcheck disable=SC2206
[[ -n "${EXTRA_ARGS:-}" ]] && args+=(${EXTRA_ARGS})

echo "$(date -u +%FT%TZ) start: $GENCAST_RMMD ${args[*]}" | tee -a "$log"
"$GENCAST_RMMD" "${args[@]}" >>"$log" 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT     # pass a stop on: the stage is stopped and recorded
wait "$pid"; code=$?
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; code=$?; done
if [[ $code -eq 2 ]] && grep -q "is locked by" "$log"; then
  echo "$(date -u +%FT%TZ) another run holds $WORKDIR/.lock: nothing done" | tee -a "$log"
  exit 0
fi
if [[ $code -ne 0 ]]; then
  echo "$(date -u +%FT%TZ) FAILED (exit $code): $(grep -E '^error: ' "$log" | tail -1)" | tee -a "$log" >&2
  echo "stage table: $GENCAST_RMMD pipeline status $WORKDIR; run log: $log" | tee -a "$log" >&2
  exit $code
fi
history="$WORKDIR/history/$stamp"
mkdir -p "$history" && cp -r "$WORKDIR/scorecard" "$WORKDIR/scores" "$WORKDIR/forecasts/inits.json" "$history/"
echo "$(date -u +%FT%TZ) done: $(tail -1 "$log"); kept in $history" | tee -a "$log"
