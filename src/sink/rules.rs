//! The iptables and ip6tables rules that make the ipset sink's sets drop packets: a chain
//! `mailpipe` (traffic to the mail ports from the mail sets, every port from the `-all` sets) and
//! the jump to it from INPUT. The sink puts them in place at start and checks them every
//! reconciliation, so a reboot or a flush that lost them does not leave bans without effect.
//! Through the `iptables` programs (their restore format is atomic per chain), never a shell.

use std::io::Write;
use std::process::{Command, Stdio};

/// The mail ports the mail sets are dropped on.
pub const MAIL_PORTS: &str = "25,465,587,110,143,993,995,4190";
/// The chain the rules live in.
pub const CHAIN: &str = "mailpipe";

/// The rules of one family, as `iptables -S CHAIN` prints them.
fn expected(set: &str) -> Vec<String> {
    vec![
        format!("-A {CHAIN} -p tcp -m multiport --dports {MAIL_PORTS} -m set --match-set {set} src -j DROP"),
        format!("-A {CHAIN} -m set --match-set {set}-all src -j DROP"),
    ]
}

fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e} (apt-get install iptables)"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Puts the chain, its rules and the jump from INPUT in place for IPv4 (`set4`) and IPv6
/// (`set6`), where they are missing or differ; how many families needed repair.
pub fn ensure(set4: &str, set6: &str) -> Result<usize, String> {
    let mut repaired = 0;
    for (program, set) in [("iptables", set4), ("ip6tables", set6)] {
        let want = expected(set);
        let have = run(program, &["-w", "-S", CHAIN], None).unwrap_or_default();
        let mut fixed = false;
        if !have.lines().filter(|l| l.starts_with("-A")).eq(want.iter().map(String::as_str)) {
            // Declaring the chain in a restore flushes it: the rules are replaced in one step.
            let script = format!("*filter\n:{CHAIN} - [0:0]\n{}\nCOMMIT\n", want.join("\n"));
            run(&format!("{program}-restore"), &["-w", "--noflush"], Some(&script))?;
            fixed = true;
        }
        if run(program, &["-w", "-C", "INPUT", "-j", CHAIN], None).is_err() {
            run(program, &["-w", "-I", "INPUT", "-j", CHAIN], None)?;
            fixed = true;
        }
        repaired += usize::from(fixed);
    }
    Ok(repaired)
}
