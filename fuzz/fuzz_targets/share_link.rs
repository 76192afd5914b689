#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nnc_agent::fuzz::share_link(data));
