#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| microcluster_tests::fuzzing::sql_statements(data));
