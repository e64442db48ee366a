#!/bin/sh
# `make fuzz`: runs every cargo-fuzz target for FUZZ_SECONDS (default 60) each, seeded with the
# committed inputs. A crash is copied into fuzz/regressions/<target>/ (where `cargo test`
# replays it) and fails the run. Works on stable Rust (no sanitizer: `-s none`).
set -eu
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
failed=""
for target in $(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' Cargo.toml | grep -v '^microcluster'); do
    mkdir -p "corpus/$target" "regressions/$target"
    echo "== fuzzing $target for ${seconds}s"
    if ! cargo fuzz run "$target" -s none "corpus/$target" "regressions/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1; then
        for crash in artifacts/"$target"/*; do
            [ -f "$crash" ] && cp "$crash" "regressions/$target/" && echo "kept $crash in regressions/$target/"
        done
        failed="$failed $target"
    fi
done
if [ -n "$failed" ]; then
    echo "fuzzing found crashes in:$failed (inputs copied to fuzz/regressions/; fix, then commit them)" >&2
    exit 1
fi
echo "fuzzing: no crashes"
