//! Zero heap allocations per line the prefilter rejects, and none per matching line once the
//! windows hold the address, proved with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use mailpipe::clock::Mode;
use mailpipe::config::Config;
use mailpipe::pipeline::Pipeline;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_for(p: &mut Pipeline, lines: &[String]) -> u64 {
    let before = ALLOCS.load(Ordering::Relaxed);
    for l in lines {
        p.process(l.as_bytes(), 1_781_700_000, |_| {});
    }
    ALLOCS.load(Ordering::Relaxed) - before
}

#[test]
fn hot_path_does_not_allocate() {
    let mut cfg = Config::builtin();
    cfg.parse.timezone = Some("UTC".into());
    let mut p = Pipeline::new(&cfg.stages().unwrap(), Mode::Live).unwrap();
    let sample = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/sample/maillog")).unwrap();
    // Every line twice, to warm the lazy DFAs and the scratch buffers (the second time, logins
    // meet the failures and trust the first left, and take other paths).
    let all: Vec<String> = sample.lines().map(str::to_string).collect();
    allocations_for(&mut p, &all);
    allocations_for(&mut p, &all);

    let quiet: Vec<String> = sample
        .lines()
        .filter(|l| !l.contains("failed") && !l.contains("unknown user") && !l.contains("mismatch"))
        .map(str::to_string)
        .collect();
    assert!(quiet.len() > 1000);
    assert_eq!(allocations_for(&mut p, &quiet), 0, "non-matching lines must not allocate");

    // A failure from an address the window already tracks, 1 below maxretry: no allocation.
    let fail = |s: u32| {
        format!(
            "Jun 17 03:{:02}:{:02} mx1 postfix/smtpd[9]: warning: unknown[198.51.100.99]: SASL LOGIN authentication failed: x",
            s / 60,
            s % 60
        )
    };
    allocations_for(&mut p, &[fail(0)]);
    let repeat: Vec<String> = (1..4).map(fail).collect();
    assert_eq!(
        allocations_for(&mut p, &repeat),
        0,
        "matching lines of a tracked address must not allocate"
    );
}
