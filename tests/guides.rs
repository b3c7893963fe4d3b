//! Annotated log lines, checked against the shipped `pipelines/all.ron` through the real binary
//! (`mailpipe test --json --matches`): every example log line of the five guides mailpipe
//! replaces (`../shared/seeds/`), collected in `tests/guides/examples.txt`, and our own lines for
//! each service and log format in `tests/data/*.log`. Each annotated line matches exactly the
//! jails it names, each with the address it names, or nothing at all. Every failing line is
//! reported at once, with its file and line number; a line marked `fails-today` is still checked
//! (the mark only says so in the report), and a mark on a line that passes is reported too, so
//! that it gets removed.
//!
//! Annotation: `# guide: NNN ; expect: ...` (examples.txt) or `# expect: ...` (tests/data)
//! before the line; see the head of examples.txt for the fields.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

/// Relative to the crate root, as `mailpipe test` is run from there.
const EXAMPLES: &str = "tests/guides/examples.txt";
/// Our own lines per service and format.
const DATA: &str = "tests/data";
const PIPELINE: &str = "pipelines/all.ron";

/// (jail, address), the address as `mailpipe test` prints it.
type Hit = (String, String);

/// One annotated log line of examples.txt.
struct Case {
    /// 1-based line number of the log line.
    line: usize,
    text: String,
    /// Exactly these must match; empty means `none`.
    want: BTreeSet<Hit>,
    fails_today: Option<String>,
}

/// The cases, and every malformed annotation or unannotated line as an error.
fn parse(file: &str, examples: &str) -> (Vec<Case>, Vec<String>) {
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    // The annotation waiting for its log line: (its line number, want, fails-today).
    let mut pending: Option<(usize, BTreeSet<Hit>, Option<String>)> = None;
    for (i, text) in examples.lines().enumerate() {
        let n = i + 1;
        let fields = text
            .strip_prefix("# guide:")
            .map(|f| format!("guide:{f}"))
            .or_else(|| text.strip_prefix("# expect:").map(|f| format!("expect:{f}")));
        if let Some(fields) = fields {
            if let Some((at, ..)) = pending.take() {
                errors.push(format!("{file}:{at}: annotation without a log line before the next one"));
            }
            match annotation(&fields) {
                Ok((want, fails_today)) => pending = Some((n, want, fails_today)),
                Err(e) => errors.push(format!("{file}:{n}: {e}")),
            }
        } else if text.trim().is_empty() || text.starts_with('#') {
            continue;
        } else if let Some((_, want, fails_today)) = pending.take() {
            cases.push(Case {
                line: n,
                text: text.to_string(),
                want,
                fails_today,
            });
        } else {
            errors.push(format!("{file}:{n}: log line without an annotation"));
        }
    }
    if let Some((at, ..)) = pending {
        errors.push(format!("{file}:{at}: annotation without a log line at the end of the file"));
    }
    (cases, errors)
}

/// `[guide: NNN ;] expect: JAIL ADDR, ... | none (why) [; completed|derived|note|fails-today: ...]`
fn annotation(text: &str) -> Result<(BTreeSet<Hit>, Option<String>), String> {
    let mut want = None;
    let mut fails_today = None;
    for field in text.split(" ; ") {
        let (key, value) = field
            .split_once(':')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| format!("field without `key:` in annotation: {field:?}"))?;
        match key {
            "guide" => {}
            "expect" => want = Some(expectation(value)?),
            "fails-today" => fails_today = Some(value.to_string()),
            "completed" | "derived" | "note" => {}
            _ => return Err(format!("unknown annotation field {key:?}")),
        }
    }
    Ok((want.ok_or("annotation without `expect:`")?, fails_today))
}

/// `none (why)` or `JAIL ADDR, JAIL ADDR, ...`.
fn expectation(value: &str) -> Result<BTreeSet<Hit>, String> {
    if value == "none" || value.starts_with("none ") {
        return Ok(BTreeSet::new());
    }
    let mut want = BTreeSet::new();
    for pair in value.split(',') {
        let words: Vec<&str> = pair.split_whitespace().collect();
        let [jail, addr] = words[..] else {
            return Err(format!("expected `JAIL ADDR` or `none (why)`, got {pair:?}"));
        };
        let ip: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an address"))?;
        if !want.insert((jail.to_string(), ip.to_string())) {
            return Err(format!("{jail} {addr} named twice"));
        }
    }
    Ok(want)
}

/// What `mailpipe test` said about each line (by 1-based line number).
#[derive(Default)]
struct Seen {
    matched: BTreeMap<usize, BTreeSet<Hit>>,
    /// Jails whose ignore rule took the line.
    ignored: BTreeMap<usize, BTreeSet<String>>,
    /// (jail, text) where a rule matched but its <HOST> was no usable address.
    bad_host: BTreeMap<usize, Vec<Hit>>,
    /// The summary's line count.
    lines: Option<u64>,
}

fn run_mailpipe(root: &Path, file: &str) -> Seen {
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .current_dir(root)
        .env("TZ", "UTC")
        .args(["test", "-c", PIPELINE, "--json", "--matches", "--now", "2024-07-01T00:00:00Z", file])
        .output()
        .expect("run mailpipe");
    assert!(
        out.status.success(),
        "mailpipe test failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seen = Seen::default();
    for raw in String::from_utf8(out.stdout).expect("UTF-8 output").lines() {
        let v: serde_json::Value = serde_json::from_str(raw).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"));
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let line = v["line"].as_u64().unwrap_or_default() as usize;
        match v["kind"].as_str() {
            Some("match") => {
                seen.matched.entry(line).or_default().insert((s("jail"), s("host")));
            }
            Some("ignored") => {
                seen.ignored.entry(line).or_default().insert(s("jail"));
            }
            Some("bad_host") => seen.bad_host.entry(line).or_default().push((s("jail"), s("host"))),
            Some("summary") => seen.lines = v["lines"].as_u64(),
            _ => {}
        }
    }
    seen
}

fn show(hits: &BTreeSet<Hit>) -> String {
    if hits.is_empty() {
        return "none".to_string();
    }
    hits.iter().map(|(j, a)| format!("{j} {a}")).collect::<Vec<_>>().join(", ")
}

/// Every problem with the annotated lines of `file`, and how many lines failed of how many.
fn check(file: &str) -> (Vec<String>, usize, usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let examples = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let (cases, mut failures) = parse(file, &examples);
    assert!(!cases.is_empty(), "no annotated lines in {file}");
    let seen = run_mailpipe(root, file);

    let total = examples.lines().count() as u64;
    if seen.lines != Some(total) {
        failures.push(format!("mailpipe read {:?} lines of {file}, which has {total}", seen.lines));
    }

    let none = BTreeSet::new();
    let mut case_lines = BTreeSet::new();
    let (mut failing, mut marked) = (0, 0);
    for case in &cases {
        case_lines.insert(case.line);
        let got = seen.matched.get(&case.line).unwrap_or(&none);
        let ok = *got == case.want;
        if ok {
            if let Some(why) = &case.fails_today {
                failures.push(format!(
                    "{file}:{}: passes but is marked `fails-today: {why}`: remove the mark\n    {}",
                    case.line, case.text
                ));
            }
            continue;
        }
        failing += 1;
        let mut msg = format!(
            "{file}:{}: {}\n    want: {}\n    got:  {}",
            case.line,
            case.text,
            show(&case.want),
            show(got)
        );
        if let Some(jails) = seen.ignored.get(&case.line) {
            msg += &format!("\n    ignore rule of: {}", jails.iter().cloned().collect::<Vec<_>>().join(", "));
        }
        if let Some(bad) = seen.bad_host.get(&case.line) {
            msg += &format!("\n    bad host: {bad:?}");
        }
        if let Some(why) = &case.fails_today {
            marked += 1;
            msg += &format!("\n    (marked fails-today: {why})");
        }
        failures.push(msg);
    }
    // Comments and blank lines go through mailpipe too: they must match nothing.
    for (line, hits) in &seen.matched {
        if !case_lines.contains(line) {
            failures.push(format!("{file}:{line}: a comment or blank line matched: {}", show(hits)));
        }
    }

    if marked > 0 {
        failures.push(format!("{file}: {marked} of the failing lines are marked fails-today"));
    }
    (failures, failing, cases.len())
}

fn assert_clean(results: Vec<(Vec<String>, usize, usize)>) {
    let (failing, total): (usize, usize) = results.iter().map(|r| (r.1, r.2)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let failures: Vec<String> = results.into_iter().flat_map(|r| r.0).collect();
    assert!(
        failures.is_empty(),
        "{failing} of {total} annotated lines fail; {} problem(s) in all:\n\n{}\n",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_guide_line_matches_as_annotated() {
    assert_clean(vec![check(EXAMPLES)]);
}

/// Our own lines for each service and log format (`tests/data/*.log`).
#[test]
fn every_service_line_matches_as_annotated() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = std::fs::read_dir(root.join(DATA))
        .unwrap()
        .map(|e| format!("{DATA}/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".log"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {DATA}/*.log");
    assert_clean(files.iter().map(|f| check(f)).collect());
}
