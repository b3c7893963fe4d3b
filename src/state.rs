//! State that survives restarts: active bans and each address's ban history (for escalation),
//! in an embedded redb file. redb is pure Rust (no C library beside libipset), transactional and
//! crash-safe: a commit is durable when it returns, so a `kill -9` at any moment loses no ban
//! that was written.
//!
//! The file serves protection, never the other way round:
//! - a write that fails (disk full, I/O error) leaves the bans in memory, in order; every later
//!   batch and a retry each second try again, reopening the file (redb refuses all work after an
//!   I/O error until it is reopened), and the daemon says loudly, in its log and `status`, how
//!   far behind the file is, and again when it has caught up;
//! - a file that cannot be read (a flipped byte, a truncated file, a panic inside the reader) is
//!   moved aside, named in an error, and the daemon starts with an empty one and protects;
//! - values are our own bytes, decoded with bounds checks: nothing in the file can make the
//!   reader panic on its own, and `catch_unwind` guards what redb itself might do.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use redb::{Database, DatabaseError, ReadableTable, StorageError, TableDefinition, TableHandle};

use crate::policy::{Ban, Decision, History, MAX_BAN, Reason, Trust};
use crate::ports::Ports;

/// ban key (net key, `P`, port ranges) → since, until, reason, offence, jail; a key without
/// ports is a ban from before jails had their own (the mail ports; every port for recidive)
const BANS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bans.v3");
/// The same without ports in the keys, read once and migrated (a new table, so that an older
/// mailpipe started on this file does not take the new keys for damaged ones and drop them).
const V2_BANS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bans.v2");
/// net key → offences, last ban time
const HISTORY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("history.v2");
/// The first format (address → (until, prefix, jail) / (offences, last)), read once and migrated.
const OLD_BANS: TableDefinition<&[u8], (i64, u8, &str)> = TableDefinition::new("bans");
const OLD_HISTORY: TableDefinition<&[u8], (u32, i64)> = TableDefinition::new("history");
/// Positions in the inputs: `journal.cursor` → the journal cursor of the last entry processed.
const INPUTS: TableDefinition<&str, &str> = TableDefinition::new("inputs");
const JOURNAL_CURSOR: &str = "journal.cursor";
/// Where this node stands in each fleet stream (`fleet.bans`, `fleet.failures`).
pub const FLEET_CURSORS: [&str; 2] = ["fleet.bans", "fleet.failures"];
/// Trusted (address, account) pairs: key (`key`) then the account's bytes, until when.
const TRUST: TableDefinition<&[u8], i64> = TableDefinition::new("trust.v1");
/// Fleet events not yet published (Redis unreachable), oldest first.
const OUTBOX: TableDefinition<u64, &str> = TableDefinition::new("fleet.outbox");

/// Writes kept in memory while the file cannot take them, at most; beyond, the oldest go (and
/// are counted): the kernel still has those bans, only a restart would forget them.
const MAX_PENDING: usize = 1 << 20;

/// A state file that cannot be used at all.
#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {reason}")]
pub struct StateError {
    /// The file.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// One change waiting to be written.
#[derive(Debug, Clone)]
enum Op {
    Ban(Ban),
    History(History),
    Unban(IpNet),
    /// An input's position (key in `INPUTS`, value).
    Cursor(&'static str, String),
    /// The fleet's unpublished events, replacing those stored.
    Outbox(Vec<String>),
    /// A trusted pair.
    Trust(Trust),
}

/// How far the file is behind, for `status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lag {
    /// Changes not yet written.
    pub pending: usize,
    /// Changes given up because too many waited.
    pub dropped: u64,
    /// The last write error, while writes fail.
    pub error: Option<String>,
}

/// The state file and the changes not yet in it.
pub struct Store {
    path: PathBuf,
    db: Option<Database>,
    pending: VecDeque<Op>,
    dropped: u64,
    error: Option<String>,
    /// No attempt before this (backoff while the file fails).
    retry_at: Instant,
    backoff: Duration,
    /// When the last error was logged (errors repeat; the log says so once a minute).
    logged: Option<Instant>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// `[4|6, address bytes..., prefix]`
fn key(net: IpNet) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    match net.addr() {
        IpAddr::V4(a) => {
            k.push(4);
            k.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            k.push(6);
            k.extend_from_slice(&a.octets());
        }
    }
    k.push(net.prefix_len());
    k
}

/// A ban's key: its network, then its ports, so one address can hold bans on several scopes.
fn ban_key(net: IpNet, ports: &Ports) -> Vec<u8> {
    let mut k = key(net);
    k.push(b'P');
    k.extend_from_slice(&ports.to_bytes());
    k
}

/// A key's network (`key`) and what follows it.
fn split_key(k: &[u8]) -> Option<(IpNet, &[u8])> {
    let len = match k.first()? {
        4 => 6,
        6 => 18,
        _ => return None,
    };
    Some((net_of(k.get(..len)?)?, k.get(len..)?))
}

/// The network and ports of a ban key (`None` ports: a key from before ports).
fn ban_of(k: &[u8]) -> Option<(IpNet, Option<Ports>)> {
    let (net, rest) = split_key(k)?;
    match rest {
        [] => Some((net, None)),
        [b'P', ranges @ ..] => Some((net, Some(Ports::from_bytes(ranges)?))),
        _ => None,
    }
}

fn net_of(k: &[u8]) -> Option<IpNet> {
    let (addr, prefix) = match k {
        [4, a @ .., p] if a.len() == 4 => (IpAddr::from(<[u8; 4]>::try_from(a).ok()?), *p),
        [6, a @ .., p] if a.len() == 16 => (IpAddr::from(<[u8; 16]>::try_from(a).ok()?), *p),
        _ => return None,
    };
    IpNet::new(addr, prefix).ok()
}

fn reason_code(r: Reason) -> u8 {
    match r {
        Reason::Threshold => 0,
        Reason::Recidive => 1,
        Reason::Manual => 2,
        Reason::Fleet => 3,
    }
}

fn encode_ban(b: &Ban) -> Vec<u8> {
    let mut v = Vec::with_capacity(21 + b.jail.len());
    v.extend_from_slice(&b.since.to_le_bytes());
    v.extend_from_slice(&b.until.to_le_bytes());
    v.push(reason_code(b.reason));
    v.extend_from_slice(&b.offence.to_le_bytes());
    v.extend_from_slice(b.jail.as_bytes());
    v
}

/// A stored ban, made sane at `now`: a ban cannot have started in the future (a clock that went
/// back, or a damaged value) nor last longer than any ban may.
fn decode_ban((net, ports): (IpNet, Option<Ports>), v: &[u8], now: i64) -> Option<Ban> {
    let i64_at = |i: usize| Some(i64::from_le_bytes(v.get(i..i + 8)?.try_into().ok()?));
    let (since, until) = (i64_at(0)?, i64_at(8)?);
    let reason = match v.get(16)? {
        0 => Reason::Threshold,
        1 => Reason::Recidive,
        2 => Reason::Manual,
        3 => Reason::Fleet,
        _ => return None,
    };
    let offence = u32::from_le_bytes(v.get(17..21)?.try_into().ok()?);
    let jail: Arc<str> = String::from_utf8_lossy(v.get(21..)?).into();
    let length = until.saturating_sub(since).clamp(0, MAX_BAN as i64);
    let since = since.min(now);
    let ports = ports.unwrap_or_else(|| {
        if reason == Reason::Recidive {
            Ports::every()
        } else {
            Ports::mail()
        }
    });
    Some(Ban {
        net,
        jail,
        since,
        until: since.saturating_add(length),
        reason,
        offence,
        ports,
    })
}

fn encode_history(&(_, count, last): &History) -> Vec<u8> {
    let mut v = count.to_le_bytes().to_vec();
    v.extend_from_slice(&last.to_le_bytes());
    v
}

fn decode_history(net: IpNet, v: &[u8]) -> Option<History> {
    let count = u32::from_le_bytes(v.get(0..4)?.try_into().ok()?);
    let last = i64::from_le_bytes(v.get(4..12)?.try_into().ok()?);
    Some((net, count, last))
}

/// An error that says the file itself is damaged (as opposed to the disk failing).
fn damaged(e: &DatabaseError) -> bool {
    match e {
        DatabaseError::Storage(StorageError::Io(io)) => {
            matches!(io.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData)
        }
        DatabaseError::Storage(StorageError::Corrupted(_) | StorageError::ValueTooLarge(_))
        | DatabaseError::RepairAborted
        | DatabaseError::UpgradeRequired(_) => true,
        _ => false,
    }
}

/// Opens or creates the file; errors start with `in use: ` or `damaged: ` when they say so.
fn create(path: &Path) -> Result<Database, String> {
    let db = guarded(|| {
        Database::create(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => format!("in use: {e}"),
            e if damaged(&e) => format!("damaged: {e}"),
            e => e.to_string(),
        })
    })?;
    // Who was banned, and when, is nobody else's business.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| format!("cannot make it private: {e}"))?;
    Ok(db)
}

/// Runs `f`, turning a panic into an error: whatever a damaged file makes the reader do.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("the reader panicked: {what}"))
    })
}

/// What the file held at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Bans still active.
    pub bans: Vec<Ban>,
    /// Histories younger than `forget`.
    pub history: Vec<History>,
    /// Where the journal input stopped.
    pub journal_cursor: Option<String>,
    /// Where this node stood in each fleet stream (`FLEET_CURSORS` order).
    pub fleet_cursors: [Option<String>; 2],
    /// Fleet events still to publish.
    pub fleet_outbox: Vec<String>,
    /// Trusted (account, address) pairs still good.
    pub trust: Vec<Trust>,
}

impl Store {
    /// Opens (or creates) the state file and reads what it holds at `now`, purging expired bans
    /// and history older than `forget` seconds. A damaged file is moved aside (and logged) and a
    /// new one started; a file that cannot be opened for now (disk full, I/O) is retried later
    /// while everything is kept in memory. Only another process holding the file open, or a
    /// path that is not a regular file, is an error.
    pub fn open(path: &Path, now: i64, forget: i64) -> Result<(Store, Loaded), StateError> {
        let fail = |reason: String| StateError {
            path: path.display().to_string(),
            reason,
        };
        if let Ok(m) = std::fs::symlink_metadata(path)
            && !m.is_file()
        {
            return Err(fail("exists and is not a regular file".into()));
        }
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut store = Store {
            path: path.to_path_buf(),
            db: None,
            pending: VecDeque::new(),
            dropped: 0,
            error: None,
            retry_at: Instant::now(),
            backoff: Duration::from_millis(100),
            logged: None,
        };
        let loaded = match store.open_and_load(now, forget) {
            Ok(l) => l,
            Err(Opening::InUse(e)) => return Err(fail(e)),
            Err(Opening::Unavailable(e)) => {
                store.failed(&e);
                Loaded::default()
            }
            Err(Opening::Damaged(e)) => {
                store.move_aside(&e);
                store.open_and_load(now, forget).unwrap_or_else(|e| {
                    store.failed(&e.to_string());
                    Loaded::default()
                })
            }
        };
        Ok((store, loaded))
    }

    fn open_and_load(&mut self, now: i64, forget: i64) -> Result<Loaded, Opening> {
        let path = self.path.clone();
        let mut db = create(&path).map_err(Opening::classify)?;
        match guarded(|| db.check_integrity().map_err(|e| format!("damaged: {e}"))) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "state file {}: repaired after an unclean stop (the last writes may be lost)",
                path.display()
            ),
            Err(e) => return Err(Opening::classify(e)),
        }
        let loaded = guarded(|| Self::load(&db, now, forget).map_err(|e| format!("damaged: {e}"))).map_err(Opening::classify)?;
        self.db = Some(db);
        Ok(loaded)
    }

    /// Reads (and migrates, and purges) everything in one write transaction.
    fn load(db: &Database, now: i64, forget: i64) -> Result<Loaded, redb::Error> {
        let w = db.begin_write()?;
        let mut loaded = Loaded::default();
        {
            let mut bans = w.open_table(BANS)?;
            let mut history = w.open_table(HISTORY)?;
            Self::migrate(&w, &mut bans, &mut history, now)?;
            let inputs = w.open_table(INPUTS)?;
            loaded.journal_cursor = inputs.get(JOURNAL_CURSOR)?.map(|v| v.value().to_string());
            for (c, key) in loaded.fleet_cursors.iter_mut().zip(FLEET_CURSORS) {
                *c = inputs.get(key)?.map(|v| v.value().to_string());
            }
            drop(inputs);
            for e in w.open_table(OUTBOX)?.iter()? {
                loaded.fleet_outbox.push(e?.1.value().to_string());
            }
            let mut trust = w.open_table(TRUST)?;
            trust.retain(|_, until| until > now)?;
            for e in trust.iter()? {
                let (k, until) = e?;
                if let Some((net, Ok(account))) = split_key(k.value()).map(|(n, a)| (n, std::str::from_utf8(a))) {
                    loaded.trust.push((account.into(), net, until.value()));
                }
            }
            let mut stale = Vec::new();
            for e in bans.iter()? {
                let (k, v) = e?;
                match ban_of(k.value()).and_then(|n| decode_ban(n, v.value(), now)) {
                    Some(b) if b.until > now => loaded.bans.push(b),
                    _ => stale.push(k.value().to_vec()),
                }
            }
            for k in stale.drain(..) {
                bans.remove(k.as_slice())?;
            }
            for e in history.iter()? {
                let (k, v) = e?;
                match net_of(k.value()).and_then(|n| decode_history(n, v.value())) {
                    Some(h) if now - h.2 <= forget => loaded.history.push(h),
                    _ => stale.push(k.value().to_vec()),
                }
            }
            for k in stale {
                history.remove(k.as_slice())?;
            }
        }
        w.commit()?;
        Ok(loaded)
    }

    /// Copies the first format's tables into the current ones and deletes them.
    fn migrate(
        w: &redb::WriteTransaction,
        bans: &mut redb::Table<&[u8], &[u8]>,
        history: &mut redb::Table<&[u8], &[u8]>,
        now: i64,
    ) -> Result<(), redb::Error> {
        let names: Vec<String> = w.list_tables()?.map(|t| t.name().to_string()).collect();
        if names.iter().any(|n| n == V2_BANS.name()) {
            // Its keys are read as bans on the mail ports (every port for recidive) by `ban_of`.
            for e in w.open_table(V2_BANS)?.iter()? {
                let (k, v) = e?;
                bans.insert(k.value(), v.value())?;
            }
            w.delete_table(V2_BANS)?;
        }
        let addr = |k: &[u8]| match k.len() {
            4 => <[u8; 4]>::try_from(k).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(k).ok().map(IpAddr::from),
            _ => None,
        };
        if names.iter().any(|n| n == OLD_BANS.name()) {
            for e in w.open_table(OLD_BANS)?.iter()? {
                let (k, v) = e?;
                let (until, prefix, jail) = v.value();
                if let Some(net) = addr(k.value()).and_then(|a| IpNet::new(a, prefix).ok()) {
                    let ban = Ban {
                        net,
                        jail: jail.into(),
                        since: now,
                        until,
                        reason: Reason::Threshold,
                        offence: 1,
                        ports: Ports::mail(),
                    };
                    bans.insert(ban_key(net, &ban.ports).as_slice(), encode_ban(&ban).as_slice())?;
                }
            }
            w.delete_table(OLD_BANS)?;
        }
        if names.iter().any(|n| n == OLD_HISTORY.name()) {
            for e in w.open_table(OLD_HISTORY)?.iter()? {
                let (k, v) = e?;
                if let Some(a) = addr(k.value()) {
                    let prefix = if a.is_ipv4() { 32 } else { 64 };
                    let net = IpNet::new(a, prefix).expect("valid prefix");
                    let (count, last) = v.value();
                    history.insert(key(net).as_slice(), encode_history(&(net, count, last)).as_slice())?;
                }
            }
            w.delete_table(OLD_HISTORY)?;
        }
        Ok(())
    }

    /// Renames a damaged file to `<name>.damaged-<unix time>` and says so.
    fn move_aside(&mut self, why: &str) {
        self.db = None;
        let stamp = crate::clock::wall_clock();
        let mut aside = self.path.clone().into_os_string();
        aside.push(format!(".damaged-{stamp}"));
        match std::fs::rename(&self.path, &aside) {
            Ok(()) => tracing::error!(
                "state file {} cannot be read ({why}); moved aside to {} and started afresh: bans it held are not restored",
                self.path.display(),
                Path::new(&aside).display()
            ),
            Err(e) => tracing::error!("state file {} cannot be read ({why}) nor moved aside ({e})", self.path.display()),
        }
    }

    /// Records a batch of decisions: bans and their offence counts, then writes what waits.
    pub fn record(&mut self, decisions: &[Decision]) {
        for d in decisions {
            self.push(Op::Ban(d.ban()));
            self.push(Op::History((d.net, d.offence, d.since)));
        }
        self.flush();
    }

    /// Notes where the journal input is; written with the next flush (at most once a second),
    /// replacing a cursor still waiting.
    pub fn journal_cursor(&mut self, cursor: &str) {
        self.cursor(JOURNAL_CURSOR, cursor);
    }

    /// Notes where this node stands in a fleet stream (a `FLEET_CURSORS` key), like
    /// `journal_cursor`.
    pub fn fleet_cursor(&mut self, key: &'static str, id: &str) {
        self.cursor(key, id);
    }

    fn cursor(&mut self, key: &'static str, value: &str) {
        if let Some(Op::Cursor(k, c)) = self.pending.back_mut()
            && *k == key
        {
            c.clear();
            c.push_str(value);
            return;
        }
        self.push(Op::Cursor(key, value.to_string()));
    }

    /// Remembers trusted pairs, written with the next flush.
    pub fn trust(&mut self, pairs: Vec<Trust>) {
        for p in pairs {
            self.push(Op::Trust(p));
        }
    }

    /// Stores the fleet events waiting to be published (empty: all were), replacing the last.
    pub fn fleet_outbox(&mut self, events: Vec<String>) {
        self.push(Op::Outbox(events));
    }

    /// Forgets an active ban (the history stays), then writes what waits.
    pub fn remove(&mut self, net: IpNet) {
        self.push(Op::Unban(net));
        self.flush();
    }

    fn push(&mut self, op: Op) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(op);
    }

    /// Writes every waiting change in one transaction, unless the file failed moments ago.
    /// Called with each batch of decisions and once a second; true when nothing waits.
    pub fn flush(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        if Instant::now() < self.retry_at {
            return false;
        }
        let result = match &self.db {
            Some(db) => Self::write(db, &self.pending).map_err(|e| e.to_string()),
            None => self.reopen(),
        };
        match result {
            Ok(()) => {
                if self.error.take().is_some() {
                    tracing::info!(
                        "state file {} is written again: {} waiting changes caught up",
                        self.path.display(),
                        self.pending.len()
                    );
                }
                self.pending.clear();
                self.backoff = Duration::from_millis(100);
                self.logged = None;
                true
            }
            Err(e) => {
                // redb refuses everything after an I/O error until the file is reopened.
                self.db = None;
                self.failed(&e);
                false
            }
        }
    }

    /// Reopens the file and writes what waits (a damaged file is moved aside first).
    fn reopen(&mut self) -> Result<(), String> {
        let db = match create(&self.path).map_err(Opening::classify) {
            Ok(db) => db,
            Err(Opening::Damaged(e)) => {
                self.move_aside(&e);
                create(&self.path)?
            }
            Err(e) => return Err(e.to_string()),
        };
        Self::write(&db, &self.pending).map_err(|e| e.to_string())?;
        self.db = Some(db);
        Ok(())
    }

    fn write(db: &Database, ops: &VecDeque<Op>) -> Result<(), redb::Error> {
        let w = db.begin_write()?;
        {
            let mut bans = w.open_table(BANS)?;
            let mut history = w.open_table(HISTORY)?;
            let mut inputs = w.open_table(INPUTS)?;
            for op in ops {
                match op {
                    Op::Cursor(k, c) => {
                        inputs.insert(*k, c.as_str())?;
                    }
                    Op::Trust((account, net, until)) => {
                        let mut k = key(*net);
                        k.extend_from_slice(account.as_bytes());
                        w.open_table(TRUST)?.insert(k.as_slice(), *until)?;
                    }
                    Op::Outbox(events) => {
                        let mut outbox = w.open_table(OUTBOX)?;
                        outbox.retain(|_, _| false)?;
                        for (i, e) in events.iter().enumerate() {
                            outbox.insert(i as u64, e.as_str())?;
                        }
                    }
                    Op::Ban(b) => {
                        bans.insert(ban_key(b.net, &b.ports).as_slice(), encode_ban(b).as_slice())?;
                    }
                    Op::History(h) => {
                        history.insert(key(h.0).as_slice(), encode_history(h).as_slice())?;
                    }
                    Op::Unban(net) => {
                        // Every scope's ban of the network: the keys that start with it.
                        let start = key(*net);
                        let mut keys: Vec<Vec<u8>> = Vec::new();
                        for e in bans.range(start.as_slice()..)? {
                            let k = e?.0.value().to_vec();
                            if !k.starts_with(&start) {
                                break;
                            }
                            keys.push(k);
                        }
                        for k in keys {
                            bans.remove(k.as_slice())?;
                        }
                    }
                }
            }
        }
        w.commit()?;
        Ok(())
    }

    /// Notes a failed write: backoff (0.1 s doubling to 5 s) and a loud log line, repeated once a
    /// minute while it lasts.
    fn failed(&mut self, e: &str) {
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
        if self.logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            self.logged = Some(Instant::now());
            tracing::error!(
                "state file {}: {e}; {} changes wait in memory and are retried (bans still reach the firewall)",
                self.path.display(),
                self.pending.len()
            );
        }
        self.error = Some(e.to_string());
    }

    /// How far the file is behind.
    pub fn lag(&self) -> Lag {
        Lag {
            pending: self.pending.len(),
            dropped: self.dropped,
            error: self.error.clone(),
        }
    }
}

/// Why opening failed.
enum Opening {
    /// Another process has it.
    InUse(String),
    /// The file is damaged: move it aside.
    Damaged(String),
    /// Not now (disk full, I/O): retry later.
    Unavailable(String),
}

impl Opening {
    fn classify(e: String) -> Opening {
        if e.starts_with("in use: ") {
            Opening::InUse(e)
        } else if e.starts_with("damaged: ") || e.starts_with("the reader panicked") {
            Opening::Damaged(e)
        } else {
            Opening::Unavailable(e)
        }
    }
}

impl std::fmt::Display for Opening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Opening::InUse(e) | Opening::Damaged(e) | Opening::Unavailable(e) => f.write_str(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(ip: &str, since: i64, ban_for: u64, offence: u32) -> Decision {
        let addr: IpAddr = ip.parse().unwrap();
        Decision {
            net: IpNet::new(addr, if addr.is_ipv4() { 32 } else { 64 }).unwrap().trunc(),
            jail: "j".into(),
            failures: 5,
            ban_for,
            offence,
            time: since,
            since,
            reason: Reason::Threshold,
            narrowed_from: None,
            ports: Ports::mail(),
            evidence: Default::default(),
            restored: false,
            node: None,
        }
    }

    #[test]
    fn bans_and_history_round_trip_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (mut s, loaded) = Store::open(&path, 0, 86_400).unwrap();
        assert!(loaded.bans.is_empty());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "private");
        s.record(&[decision("192.0.2.1", 100, 3600, 2), decision("2001:db8::", 100, 10, 1)]);
        drop(s);
        let (mut s, loaded) = Store::open(&path, 200, 86_400).unwrap();
        assert_eq!(loaded.bans.len(), 1);
        let b = &loaded.bans[0];
        assert_eq!(
            (b.net.to_string().as_str(), b.since, b.until, b.offence),
            ("192.0.2.1/32", 100, 3700, 2)
        );
        assert_eq!(loaded.history.len(), 2);
        s.remove("192.0.2.1/32".parse().unwrap());
        drop(s);
        assert!(Store::open(&path, 200, 86_400).unwrap().1.bans.is_empty());
        assert!(
            Store::open(&path, 100_000, 86_400).unwrap().1.history.is_empty(),
            "old history is purged"
        );
    }

    #[test]
    fn a_ban_dated_in_the_future_is_not_restored_for_decades() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (mut s, _) = Store::open(&path, 0, 86_400).unwrap();
        // Written by an earlier version from a line dated 2099.
        s.record(&[decision("192.0.2.1", 4_070_908_800, 3600, 1)]);
        drop(s);
        let now = 1_800_000_000;
        let b = Store::open(&path, now, 86_400).unwrap().1.bans.remove(0);
        assert_eq!((b.since, b.until), (now, now + 3600));
    }

    #[test]
    fn a_damaged_file_is_moved_aside_and_a_new_one_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (mut s, _) = Store::open(&path, 0, 86_400).unwrap();
        s.record(&[decision("192.0.2.1", 100, 3600, 1)]);
        drop(s);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len / 3)
            .unwrap();
        let (mut s, loaded) = Store::open(&path, 200, 86_400).unwrap();
        assert!(loaded.bans.is_empty());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("s.redb.damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        s.record(&[decision("192.0.2.2", 300, 3600, 1)]);
        assert_eq!(s.lag(), Lag::default(), "the new file takes writes");
    }

    #[test]
    fn garbage_values_never_panic() {
        let net: IpNet = "192.0.2.1/32".parse().unwrap();
        for v in [&b""[..], b"\xff", &[0xff; 21], &[0u8; 20]] {
            let _ = decode_ban((net, None), v, 0);
            let _ = decode_history(net, v);
        }
        assert_eq!(net_of(&[4, 1, 2, 3]), None);
        assert_eq!(net_of(&[4, 1, 2, 3, 4, 99]), None, "prefix longer than the address");
        assert_eq!(ban_of(&[4, 1, 2, 3, 4, 32, b'P', 1]), None, "half a port range");
        assert_eq!(ban_of(&[4, 1, 2, 3, 4, 32, b'X']), None);
    }

    #[test]
    fn bans_of_the_previous_format_are_migrated_with_their_old_ports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(V2_BANS).unwrap();
                let mut recidive = decision("192.0.2.2", 100, 3600, 1).ban();
                recidive.reason = Reason::Recidive;
                for b in [decision("192.0.2.1", 100, 3600, 1).ban(), recidive] {
                    t.insert(key(b.net).as_slice(), encode_ban(&b).as_slice()).unwrap();
                }
            }
            w.commit().unwrap();
        }
        let (_, loaded) = Store::open(&path, 200, 86_400).unwrap();
        let mut got: Vec<_> = loaded.bans.iter().map(|b| (b.net.to_string(), b.ports.clone())).collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("192.0.2.1/32".to_string(), Ports::mail()),
                ("192.0.2.2/32".to_string(), Ports::every())
            ]
        );
    }

    #[test]
    fn one_address_keeps_a_ban_per_port_scope_and_unban_lifts_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (mut s, _) = Store::open(&path, 0, 86_400).unwrap();
        let web = Ports::resolve(&[crate::ports::PortSpec::Name("80,443".into())], |_| None).unwrap();
        let (a, mut b) = (decision("192.0.2.1", 100, 3600, 1), decision("192.0.2.1", 100, 3600, 2));
        b.ports = web.clone();
        s.record(&[a, b, decision("192.0.2.10", 100, 3600, 1)]);
        drop(s);
        let (mut s, loaded) = Store::open(&path, 200, 86_400).unwrap();
        let mut scopes: Vec<_> = loaded
            .bans
            .iter()
            .filter(|b| b.net.addr().to_string() == "192.0.2.1")
            .map(|b| b.ports.clone())
            .collect();
        scopes.sort();
        let mut want = vec![Ports::mail(), web];
        want.sort();
        assert_eq!(scopes, want);
        s.remove("192.0.2.1/32".parse().unwrap());
        drop(s);
        let left = Store::open(&path, 200, 86_400).unwrap().1.bans;
        assert_eq!(left.len(), 1, "another address keeps its ban");
    }
}
