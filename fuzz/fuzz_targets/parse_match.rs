//! Any bytes through the whole parse + prefilter + match + window + policy path, with every
//! shipped jail: it must never panic.
#![no_main]

use std::sync::{LazyLock, Mutex};

use libfuzzer_sys::fuzz_target;
use mailpipe::config::Config;
use mailpipe::clock::Mode;
use mailpipe::pipeline::Pipeline;

static PIPELINE: LazyLock<Mutex<Pipeline>> = LazyLock::new(|| {
    let mut cfg = Config::builtin_named("all.ron").expect("shipped");
    cfg.parse.timezone = Some("UTC".into());
    Mutex::new(Pipeline::new(&cfg.stages().expect("ports resolve"), Mode::Replay).expect("builds"))
});

fuzz_target!(|data: &[u8]| {
    let mut p = PIPELINE.lock().unwrap();
    for line in data.split(|&b| b == b'\n') {
        p.process(line, 1_700_000_000, |_| {});
    }
});
