//! Property tests: no input makes the parse + match path panic, and what a prefilter skips
//! could never have matched. The same entry point is fuzzed with cargo-fuzz (`fuzz/`).

use mailpipe::clock::Mode;
use mailpipe::config::Config;
use mailpipe::matcher::Matcher;
use mailpipe::parse::{Parser, Zone};
use mailpipe::pipeline::Pipeline;
use mailpipe::prefilter::Prefilter;
use proptest::prelude::*;
use std::sync::{LazyLock, Mutex};

fn all() -> Config {
    let mut cfg = Config::builtin_named("all.ron").unwrap();
    cfg.parse.timezone = Some("UTC".into());
    cfg
}

/// Pieces real lines are made of, so generated lines get deep into the rules.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Jun 17 03:14:07 mx1 ".to_string()),
        Just("<22>1 2026-11-22T21:59:13.053111+00:00 vm ".to_string()),
        Just("@4000000066700a6e00000000 ".to_string()),
        Just("[17-Jun-2024 07:14:08 +0200]: ".to_string()),
        Just("postfix/smtpd[1]: ".to_string()),
        Just("dovecot: ".to_string()),
        Just("imap-login: ".to_string()),
        Just("warning: unknown[".to_string()),
        Just("]: SASL LOGIN authentication failed: ".to_string()),
        Just("(auth failed, 3 attempts): user=<".to_string()),
        Just(", rip=".to_string()),
        Just("192.0.2.1".to_string()),
        Just("::ffff:198.51.100.7".to_string()),
        Just("2001:db8::".to_string()),
        Just("NOQUEUE: reject: RCPT from x[".to_string()),
        Just("sql(a,".to_string()),
        Just("): unknown user".to_string()),
        "[ -~]{0,12}",
        any::<u8>().prop_map(|b| String::from_utf8_lossy(&[b]).into_owned()),
    ]
}

// Compiled once: matches do not depend on what earlier lines left in the windows.
static LIVE: LazyLock<Mutex<Pipeline>> = LazyLock::new(|| Mutex::new(Pipeline::new(&all().stages().unwrap(), Mode::Live).unwrap()));
static REPLAY: LazyLock<Mutex<Pipeline>> = LazyLock::new(|| Mutex::new(Pipeline::new(&all().stages().unwrap(), Mode::Replay).unwrap()));
/// How many rules (patterns) the matcher has.
fn rules(m: &Matcher) -> u32 {
    m.literal_sets().len() as u32
}

/// The raw stages, to search every line in full whatever the prefilter says.
struct Stages {
    prefilter: Prefilter,
    parser: Parser,
    matcher: Matcher,
}

static STAGES: LazyLock<Mutex<Stages>> = LazyLock::new(|| {
    let cfg = all();
    let matcher = Matcher::new(&cfg.jails, &cfg.origins, &cfg.matcher).unwrap();
    assert_eq!(matcher.unliteral_rules().count(), 0, "every shipped rule has a literal");
    let prefilter = Prefilter::new(matcher.literal_sets());
    Mutex::new(Stages {
        prefilter,
        parser: Parser::new(Zone::resolve(Some("UTC")).unwrap()),
        matcher,
    })
});

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn structured_lines_never_panic(parts in prop::collection::vec(fragment(), 0..12)) {
        let mut p = REPLAY.lock().unwrap();
        let line = parts.concat();
        p.process(line.as_bytes(), 1_700_000_000, |_| {});
        let _ = p.explain(line.as_bytes(), 1_700_000_000);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut p = LIVE.lock().unwrap();
        p.process(&bytes, 0, |_| {});
    }

    #[test]
    fn the_prefilter_never_hides_a_match(parts in prop::collection::vec(fragment(), 0..12)) {
        // Trying every rule must find exactly what trying the prefilter's candidates finds.
        let line = parts.concat();
        let st = &mut *STAGES.lock().unwrap();
        let rec = st.parser.parse(&line);
        let every: Vec<u32> = (0..rules(&st.matcher)).collect();
        let mut full = Vec::new();
        st.matcher.find(&rec, &every, &mut full);
        let any = st.prefilter.is_candidate(line.as_bytes());
        let cands = st.prefilter.candidates(any).to_vec();
        let mut filtered = Vec::new();
        st.matcher.find(&rec, &cands, &mut filtered);
        prop_assert_eq!(full, filtered, "line {:?}", line);
    }
}
