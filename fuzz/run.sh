#!/usr/bin/env bash
# Runs every libFuzzer target for SECONDS each (default 60), one after another, and prints
# each one's executions and coverage. Usage: fuzz/run.sh [seconds] [target...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`, 0.13) and a C++ compiler (libFuzzer
# is built from source). Works on stable Rust: with `--sanitizer none` cargo-fuzz passes only
# stable flags (SanitizerCoverage through -Cpasses/-Cllvm-args). Without AddressSanitizer,
# memory errors in C code are not caught; our code forbids `unsafe`, so what is found is
# panics, overflows (debug assertions are on), timeouts and runaway memory.
#
# The committed corpus (fuzz/corpus/<target>) is read but never written: new inputs go to a
# scratch corpus under the target dir, crashes to fuzz/artifacts/<target>. To keep an input
# as a seed, copy it into fuzz/corpus/<target> (a few dozen small files at most).
# The property tests beside each parser (`cargo test`) are CI's share of this; this script
# is not run by CI.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(preamble verdict spiffe certificate config resource dns)
fi

# Not the workspace's shared cache: these builds use other flags and would only evict it.
target_dir="${CAUSEWAY_FUZZ_TARGET_DIR:-$HOME/.cache/causeway-fuzz-target}"
scratch="$target_dir/corpus"
summary=()

# Release with debug assertions: overflow checks find bugs too.
flags=(--sanitizer none --release --debug-assertions --target-dir "$target_dir")
echo "== building (${targets[*]})"
cargo fuzz build "${flags[@]}"
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "artifacts/$t"
  log="$target_dir/$t.log"
  echo "== $t: ${seconds}s"
  status=0
  cargo fuzz run "${flags[@]}" "$t" \
    "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || status=$?
  # The last status line, e.g. "#123456 DONE cov: 2345 ft: 6789 corp: 321/45Kb exec/s: 2057".
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
  cov=$(sed -nE 's/.* cov: ([0-9]+) .*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+) .*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$last")
  line="$t: execs=${execs:-?} cov=${cov:-?} ft=${ft:-?} corpus=${corp:-?} exit=$status"
  echo "$line"
  summary+=("$line")
  if [ "$status" -ne 0 ]; then
    echo "-- $t failed; the end of $log:"
    tail -n 40 "$log"
  fi
done
echo "== summary (${seconds}s each)"
printf '%s\n' "${summary[@]}"
for line in "${summary[@]}"; do
  [[ "$line" == *"exit=0" ]] || exit 1
done
