//! The iptables and ip6tables rules that make the ipset sink's sets drop packets: a chain
//! `mailpipe` (per port scope, traffic to its ports from its sets; every port from the `-all`
//! sets) and the jump to it from INPUT, and from FORWARD for hosts that forward to the mail
//! services (containers, VMs). The sink puts them in place at start and checks them every
//! reconciliation, so a reboot or a flush that lost them does not leave bans without effect.
//! Through the `iptables` programs (their restore format is atomic per chain), never a shell.

/// The chain the rules live in.
pub const CHAIN: &str = "mailpipe";

/// One port scope's sets, for the rules that drop them.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The IPv4 set.
    pub set4: &'a str,
    /// The IPv6 set.
    pub set6: &'a str,
    /// The ports its bans drop.
    pub ports: &'a crate::ports::Ports,
}

/// The rules of one family, as `iptables -S CHAIN` prints them: per scope, a drop on its ports
/// (several rules where multiport's 15 slots do not hold them) or on every port.
fn expected(scopes: &[Scope<'_>], v6: bool) -> Vec<String> {
    let mut rules = Vec::new();
    for s in scopes {
        let set = if v6 { s.set6 } else { s.set4 };
        if s.ports.is_every() {
            rules.push(format!("-A {CHAIN} -m set --match-set {set} src -j DROP"));
        }
        for dports in s.ports.multiport() {
            rules.push(format!(
                "-A {CHAIN} -p tcp -m multiport --dports {dports} -m set --match-set {set} src -j DROP"
            ));
        }
    }
    rules
}

/// The firewall's own programs answer at once; one that hangs (a held xtables lock) is given up.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    super::exec::run(program, args, input.map(str::as_bytes), LIMIT).map_err(|e| match e {
        super::exec::ExecError::Spawn(why) => format!("cannot run {program}: {why} (apt-get install iptables)"),
        e => format!("{program}: {e}"),
    })
}

/// Puts the chain, its rules and the jumps to it (from INPUT, and from FORWARD with
/// `forward`) in place for IPv4 and IPv6, where they are missing or differ; how many families
/// needed repair.
pub fn ensure(scopes: &[Scope<'_>], forward: bool) -> Result<usize, String> {
    let mut repaired = 0;
    for (program, v6) in [("iptables", false), ("ip6tables", true)] {
        let want = expected(scopes, v6);
        let have = run(program, &["-w", "-S", CHAIN], None).unwrap_or_default();
        let mut fixed = false;
        if !have.lines().filter(|l| l.starts_with("-A")).eq(want.iter().map(String::as_str)) {
            // Declaring the chain in a restore flushes it: the rules are replaced in one step.
            let script = format!("*filter\n:{CHAIN} - [0:0]\n{}\nCOMMIT\n", want.join("\n"));
            run(&format!("{program}-restore"), &["-w", "--noflush"], Some(&script))?;
            fixed = true;
        }
        let hooks: &[&str] = if forward { &["INPUT", "FORWARD"] } else { &["INPUT"] };
        for hook in hooks {
            if run(program, &["-w", "-C", hook, "-j", CHAIN], None).is_err() {
                run(program, &["-w", "-I", hook, "-j", CHAIN], None)?;
                fixed = true;
            }
        }
        repaired += usize::from(fixed);
    }
    Ok(repaired)
}
