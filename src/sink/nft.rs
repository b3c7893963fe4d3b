//! The nftables sink: bans as elements with per-entry timeouts in named sets of an `inet`
//! table, sent as `nft -f -` batches (the default firewall on current Debian and RHEL).
//!
//! The table holds the sets and (unless `rules: false`) the `input` chain that drops from them.
//! Reconciliation, every `reconcile` period: a table that is gone is made again, the sets are
//! read (`nft -j list set`), and every ban missing from them is added again in one batch, with
//! bans longer than the kernel timeout refreshed before their element runs out.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use super::kernel::{Entry, Repairs};
use crate::policy::Decision;
use crate::ports::Ports;

/// Where the nftables sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftConfig {
    /// `inet` table holding the sets.
    pub table: String,
    /// Set of IPv4 addresses (`type ipv4_addr; flags timeout`).
    pub set4: String,
    /// Set of IPv6 networks (`type ipv6_addr; flags interval, timeout`).
    pub set6: String,
    /// Keep the table's `input` chain (the drop rules) in place.
    pub rules: bool,
    /// Also drop banned traffic forwarded to other hosts (a `forward` chain).
    pub forward: bool,
}

/// Why nft refused.
#[derive(Debug, thiserror::Error)]
#[error("nft: {0}")]
pub struct NftError(pub String);

/// The open sink: remembers when each element it added expires, to replace only with longer bans.
#[derive(Debug)]
pub struct Nft {
    cfg: NftConfig,
    /// Each port scope's (IPv4 set, IPv6 set).
    scopes: BTreeMap<Ports, (String, String)>,
    until: HashMap<(IpNet, Ports), Entry>,
}

/// Names go into nft's grammar: keep them to identifier characters.
fn valid(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn run(script: &str) -> Result<(), NftError> {
    super::exec::run("nft", &["-f", "-"], Some(script.as_bytes()), std::time::Duration::from_secs(30))
        .map(drop)
        .map_err(|e| match e {
            super::exec::ExecError::Spawn(why) => NftError(format!("cannot run nft: {why} (apt-get install nftables)")),
            e => NftError(e.to_string()),
        })
}

impl Nft {
    /// Creates the table and the sets of each of `scopes` and of every port if missing (an
    /// existing table keeps its contents).
    pub fn open(cfg: &NftConfig, scopes: &[Ports]) -> Result<Nft, NftError> {
        for n in [&cfg.table, &cfg.set4, &cfg.set6] {
            if !valid(n) {
                return Err(NftError(format!("{n:?}: names are letters, digits, _ and -")));
            }
        }
        let mut nft = Nft {
            cfg: cfg.clone(),
            scopes: BTreeMap::new(),
            until: HashMap::new(),
        };
        for ports in scopes.iter().cloned().chain([Ports::every()]) {
            nft.add_scope(ports);
        }
        run(&nft.table_script())?;
        Ok(nft)
    }

    /// Names a scope's sets; whether it was new.
    fn add_scope(&mut self, ports: Ports) -> bool {
        if self.scopes.contains_key(&ports) {
            return false;
        }
        let name = |base: &str| super::kernel::scope_set(base, &ports, '_', 64);
        let names = (name(&self.cfg.set4), name(&self.cfg.set6));
        tracing::info!("bans on {ports} go to nftables sets {} and {}", names.0, names.1);
        self.scopes.insert(ports, names);
        true
    }

    /// The table, its sets and (with `rules`) its chains, idempotent: existing sets keep their
    /// elements, the chains' rules are replaced.
    fn table_script(&self) -> String {
        let t = &self.cfg.table;
        let mut script = format!("table inet {t} {{\n");
        for (s4, s6) in self.scopes.values() {
            script +=
                &format!(" set {s4} {{ type ipv4_addr; flags timeout; }}\n set {s6} {{ type ipv6_addr; flags interval, timeout; }}\n");
        }
        script += "}\n";
        if !self.cfg.rules {
            return script;
        }
        let mut rules = String::new();
        for (ports, (s4, s6)) in &self.scopes {
            let dport = if ports.is_every() {
                String::new()
            } else {
                format!("tcp dport {} ", ports.nft())
            };
            rules += &format!("  {dport}ip saddr @{s4} drop\n  {dport}ip6 saddr @{s6} drop\n");
        }
        let hooks: &[&str] = if self.cfg.forward { &["input", "forward"] } else { &["input"] };
        for hook in hooks {
            script += &format!(
                "table inet {t} {{\n chain {hook} {{ type filter hook {hook} priority filter - 10; policy accept; }}\n}}\nflush chain inet {t} {hook}\n\
                 table inet {t} {{\n chain {hook} {{\n{rules} }}\n}}\n"
            );
        }
        script
    }

    /// What the kernel holds in `set`; `None` when the set (or its table) is gone.
    fn members(&self, set: &str) -> Option<std::collections::HashSet<IpNet>> {
        let out = Command::new("nft")
            .args(["-j", "list", "set", "inet", &self.cfg.table, set])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let elems = v["nftables"]
            .as_array()?
            .iter()
            .find_map(|o| o["set"]["elem"].as_array().cloned())
            .unwrap_or_default();
        Some(
            elems
                .iter()
                .filter_map(|e| {
                    // `"192.0.2.2"`, or `{"elem": {"val": ...}}` with a timeout; a network is
                    // `{"prefix": {"addr": ..., "len": ...}}`.
                    let val = e.get("elem").map_or(e, |x| &x["val"]);
                    match (val.as_str(), val.get("prefix")) {
                        (Some(a), _) => a.parse::<IpAddr>().ok().map(IpNet::from),
                        (None, Some(p)) => IpNet::new(p["addr"].as_str()?.parse().ok()?, p["len"].as_u64()? as u8).ok(),
                        _ => None,
                    }
                })
                .collect(),
        )
    }

    /// Puts the kernel in line with the bans: a missing table (sets, chain) comes back, every ban
    /// missing from its set is added again, long bans are refreshed.
    pub fn reconcile(&mut self, now: i64) -> Result<Repairs, NftError> {
        let mut r = Repairs::default();
        let names: Vec<String> = self.scopes.values().flat_map(|(a, b)| [a.clone(), b.clone()]).collect();
        let mut held: HashMap<String, Option<_>> = names.iter().map(|n| (n.clone(), self.members(n))).collect();
        if held.values().any(Option::is_none) {
            run(&self.table_script())?;
            r.sets += held.values().filter(|h| h.is_none()).count();
            r.rules += usize::from(self.cfg.rules);
            held = names.iter().map(|n| (n.clone(), self.members(n))).collect();
        }
        self.until.retain(|_, e| e.until > now);
        let mut script = String::new();
        let (t, scopes, until) = (&self.cfg.table, &self.scopes, &mut self.until);
        for ((net, ports), e) in until.iter_mut() {
            if e.ending(now) {
                continue;
            }
            r.checked += 1;
            let (set, elem) = element(scopes, *net, ports);
            let present = held.get(set).and_then(Option::as_ref).is_some_and(|h| h.contains(net));
            let refresh = e.needs_refresh(now);
            if present && !refresh {
                continue;
            }
            if refresh {
                script += &format!("delete element inet {t} {set} {{ {elem} }}\n");
                r.refreshed += 1;
            } else {
                r.entries += 1;
            }
            script += &format!("add element inet {t} {set} {{ {elem}{} }}\n", timeout_clause(e.renew(now)));
        }
        if !script.is_empty() {
            run(&script)?;
        }
        Ok(r)
    }

    /// Adds the element with the ban time as its timeout; one already there is replaced only
    /// by a longer ban.
    pub fn apply(&mut self, d: &Decision, now: i64) -> Result<(), NftError> {
        let (entry, timeout) = Entry::new(now, d.ban_for);
        let key = (d.net, d.ports.clone());
        let known = self.until.get(&key).copied();
        if known.is_some_and(|e| e.until >= entry.until) {
            return Ok(());
        }
        // A reload or a restored ban may bring a scope the start did not know.
        if self.add_scope(d.ports.clone()) {
            run(&self.table_script())?;
        }
        let (set, elem) = element(&self.scopes, d.net, &d.ports);
        let t = &self.cfg.table;
        let mut script = String::new();
        if known.is_some_and(|e| e.until > now) {
            script += &format!("delete element inet {t} {set} {{ {elem} }}\n");
        }
        script += &format!("add element inet {t} {set} {{ {elem}{} }}\n", timeout_clause(timeout));
        run(&script)?;
        self.until.insert(key, entry);
        if self.until.len() > 4096 {
            self.until.retain(|_, e| e.until > now);
        }
        Ok(())
    }

    /// Deletes the element from every scope's sets (absent is fine: it may have expired).
    pub fn remove(&mut self, net: IpNet) -> Result<(), NftError> {
        self.until.retain(|(n, _), _| *n != net);
        // Every scope is tried; the first failure is reported.
        let mut result = Ok(());
        for ports in self.scopes.keys() {
            let (set, elem) = element(&self.scopes, net, ports);
            // `destroy` would not fail on a missing element, but needs nft >= 1.0.8; ignore instead.
            match run(&format!("delete element inet {} {set} {{ {elem} }}\n", self.cfg.table)) {
                Err(e) if e.0.contains("No such file") => {}
                r => result = result.and(r),
            }
        }
        result
    }
}

/// ` timeout Ns`, or nothing for a permanent ban (0).
fn timeout_clause(secs: u64) -> String {
    if secs == 0 { String::new() } else { format!(" timeout {secs}s") }
}

/// The set an address or network goes to (its scope is known), and how nft writes it.
fn element<'a>(scopes: &'a BTreeMap<Ports, (String, String)>, net: IpNet, ports: &Ports) -> (&'a str, String) {
    let (s4, s6) = &scopes[ports];
    match net.addr() {
        IpAddr::V4(ip) => (s4, ip.to_string()),
        IpAddr::V6(_) => (s6, net.to_string()),
    }
}
