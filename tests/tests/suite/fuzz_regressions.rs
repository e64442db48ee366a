//! Replays every committed fuzz input (`fuzz/regressions/<target>/`: crashes `make fuzz` found,
//! and hand-made cases) through its target, so a fixed crash stays fixed without cargo-fuzz.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use microcluster_tests::fuzzing::TARGETS;

#[test]
fn every_committed_fuzz_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no inputs for fuzz target {name} in {}", dir.display());
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            eprintln!("{name}: {}", input.display());
            target(&data);
        }
    }
}
