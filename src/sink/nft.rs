//! The nftables sink: bans as elements with per-entry timeouts in named sets of an `inet`
//! table, sent as `nft -f -` batches (the default firewall on current Debian and RHEL).

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use crate::policy::Decision;

/// Where the nftables sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftConfig {
    /// `inet` table holding the sets.
    pub table: String,
    /// Set of IPv4 addresses (`type ipv4_addr; flags timeout`).
    pub set4: String,
    /// Set of IPv6 networks (`type ipv6_addr; flags interval, timeout`).
    pub set6: String,
}

/// Why nft refused.
#[derive(Debug, thiserror::Error)]
#[error("nft: {0}")]
pub struct NftError(pub String);

/// The open sink: remembers when each element it added expires, to replace only with longer bans.
#[derive(Debug)]
pub struct Nft {
    cfg: NftConfig,
    until: HashMap<(IpNet, bool), i64>,
}

/// Names go into nft's grammar: keep them to identifier characters.
fn valid(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn run(script: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NftError(format!("cannot run nft: {e} (apt-get install nftables)")))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| NftError(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| NftError(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError(
            String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("failed").to_string(),
        ))
    }
}

impl Nft {
    /// Creates the table and sets if missing (an existing table keeps its contents and rules).
    pub fn open(cfg: &NftConfig) -> Result<Nft, NftError> {
        for n in [&cfg.table, &cfg.set4, &cfg.set6] {
            if !valid(n) {
                return Err(NftError(format!("{n:?}: names are letters, digits, _ and -")));
            }
        }
        // `<set>_all`: recidive bans, dropped on every port.
        run(&format!(
            "table inet {t} {{\n set {s4} {{ type ipv4_addr; flags timeout; }}\n set {s6} {{ type ipv6_addr; flags interval, timeout; }}\n set {s4}_all {{ type ipv4_addr; flags timeout; }}\n set {s6}_all {{ type ipv6_addr; flags interval, timeout; }}\n}}\n",
            t = cfg.table,
            s4 = cfg.set4,
            s6 = cfg.set6
        ))?;
        Ok(Nft {
            cfg: cfg.clone(),
            until: HashMap::new(),
        })
    }

    fn element(&self, net: IpNet, every_port: bool) -> (String, String) {
        let suffix = if every_port { "_all" } else { "" };
        match net.addr() {
            IpAddr::V4(ip) => (format!("{}{suffix}", self.cfg.set4), ip.to_string()),
            IpAddr::V6(_) => (format!("{}{suffix}", self.cfg.set6), net.to_string()),
        }
    }

    /// Adds the element with the ban time as its timeout; one already there is replaced only
    /// by a longer ban.
    pub fn apply(&mut self, d: &Decision, now: i64) -> Result<(), NftError> {
        let until = now + d.ban_for as i64;
        let every_port = d.reason == crate::policy::Reason::Recidive;
        let key = (d.net, every_port);
        let known = self.until.get(&key).copied();
        if known.is_some_and(|u| u >= until) {
            return Ok(());
        }
        let (set, elem) = self.element(d.net, every_port);
        let t = &self.cfg.table;
        let mut script = String::new();
        if known.is_some_and(|u| u > now) {
            script += &format!("delete element inet {t} {set} {{ {elem} }}\n");
        }
        script += &format!("add element inet {t} {set} {{ {elem} timeout {}s }}\n", d.ban_for.max(1));
        run(&script)?;
        self.until.insert(key, until);
        if self.until.len() > 4096 {
            self.until.retain(|_, &mut u| u > now);
        }
        Ok(())
    }

    /// Deletes the element from both kinds of sets (absent is fine: it may have expired).
    pub fn remove(&mut self, net: IpNet) -> Result<(), NftError> {
        for every_port in [false, true] {
            self.until.remove(&(net, every_port));
            let (set, elem) = self.element(net, every_port);
            // `destroy` would not fail on a missing element, but needs nft >= 1.0.8; ignore instead.
            match run(&format!("delete element inet {} {set} {{ {elem} }}\n", self.cfg.table)) {
                Err(e) if e.0.contains("No such file") => {}
                r => r?,
            }
        }
        Ok(())
    }
}
