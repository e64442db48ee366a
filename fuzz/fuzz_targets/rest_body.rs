#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| microcluster_tests::fuzzing::rest_body(data));
