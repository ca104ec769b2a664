#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mcptap::fuzz::message(data));
