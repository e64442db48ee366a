#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| microcluster_tests::fuzzing::join_token(data));
