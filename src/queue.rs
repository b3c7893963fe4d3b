//! The pipeline's queue: what the daemon's edges (inputs, control, reload) hand the pipeline
//! thread, bounded in bytes. The edges import this, never each other.

use std::sync::Arc;

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::pipeline::Pipeline;
use crate::policy::{Shared, SharedFailure};
use crate::primitives::Dur;
use crate::sink::SinkHandle;

/// The daemon's settings for the queue and its edges (`daemon:` in a pipeline file).
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Bytes the inputs may have queued for the pipeline at once (at least 1 MiB).
    pub queue_bytes: usize,
    /// How long open connections are still read after SIGTERM.
    pub drain: Dur,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            queue_bytes: 32 << 20,
            drain: Dur(5),
        }
    }
}

/// Work done on the pipeline thread for the control socket: it sees the pipeline, the sinks and
/// the clock, and answers.
pub type ControlFn = Box<dyn FnOnce(&mut Pipeline, &mut SinkHandle, i64) -> Value + Send>;

/// Builds the pipeline anew from its file (a reload), with the changed settings a reload cannot
/// apply (inputs, sinks, ...: a restart does); runs off the pipeline thread.
pub type Reloader = Arc<dyn Fn() -> Result<(Pipeline, Vec<String>), String> + Send + Sync>;

/// The bytes the edges may have queued for the pipeline at once. Senders wait their turn for
/// room (first come, first served: a sender ready again queues behind the others), UDP drops
/// when there is none; room comes back as the pipeline finishes each message.
#[derive(Debug, Clone)]
pub struct Budget {
    room: std::sync::Arc<tokio::sync::Semaphore>,
    total: usize,
}

/// Room taken in the budget, given back when dropped (after the pipeline is done with it).
#[derive(Debug)]
pub struct Lease(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Budget {
        let total = bytes.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Budget {
            room: std::sync::Arc::new(tokio::sync::Semaphore::new(total)),
            total,
        }
    }

    fn permits(&self, bytes: usize) -> u32 {
        // A message larger than the whole budget takes all of it rather than waiting forever.
        bytes.clamp(1, self.total).min(u32::MAX as usize) as u32
    }

    /// Waits for room for `bytes`.
    pub async fn take(&self, bytes: usize) -> Lease {
        Lease(
            self.room
                .clone()
                .acquire_many_owned(self.permits(bytes))
                .await
                .expect("the budget is never closed"),
        )
    }

    /// Room for `bytes` now, or `None`.
    pub fn try_take(&self, bytes: usize) -> Option<Lease> {
        self.room.clone().try_acquire_many_owned(self.permits(bytes)).ok().map(Lease)
    }

    /// Bytes queued now.
    pub fn used(&self) -> usize {
        self.total - self.room.available_permits()
    }
}

/// What the edges hand the pipeline thread.
pub enum Msg {
    /// A chunk of a byte stream (stdin), to be cut into lines.
    Stream(Vec<u8>, Lease),
    /// Whole messages (one datagram or frame each).
    Frames(Vec<BytesMut>, Lease),
    /// Journal entries (JSON lines); the last one's cursor is where the journal resumes.
    Journal(Vec<BytesMut>, Lease),
    /// A control request, answered on the pipeline thread with what it sees there.
    Control(ControlFn, oneshot::Sender<Value>),
    /// A pipeline compiled elsewhere (a reload), to take over from the running one.
    Swap(Box<Pipeline>, oneshot::Sender<Value>),
    /// What the fleet brings (see `fleet`).
    Fleet(FleetIn),
    /// A second has passed: bans end, the state file retries, counters are published, even when
    /// no line comes.
    Tick,
    /// Stop after everything queued before this.
    Stop,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Msg::Stream(..) => "Stream",
            Msg::Frames(..) => "Frames",
            Msg::Journal(..) => "Journal",
            Msg::Control(..) => "Control",
            Msg::Swap(..) => "Swap",
            Msg::Fleet(..) => "Fleet",
            Msg::Tick => "Tick",
            Msg::Stop => "Stop",
        };
        f.write_str(name)
    }
}

/// What the fleet task hands the pipeline thread.
#[derive(Debug)]
pub enum FleetIn {
    /// Events read from a fleet stream, in its order, and the stream's cursor key
    /// (`state::FLEET_CURSORS`) to store the last one's ID under once they are applied.
    Events(&'static str, Vec<Received>),
    /// The fleet became reachable, or stopped being.
    Link(bool),
    /// This node's failures the fleet could not take: counted here now, shared later.
    CountHere(Vec<SharedFailure>),
    /// The events waiting to be published, for the state file (empty: all were).
    Outbox(Vec<String>),
}

/// One event of a fleet stream.
#[derive(Debug)]
pub struct Received {
    /// Its stream ID.
    pub id: String,
    /// Whether this node published it.
    pub own: bool,
    /// What it says (a ban arrives as `Reason::Fleet` with its node).
    pub event: Shared,
}

/// How the edges reach the pipeline: its queue and the byte budget that bounds it.
#[derive(Debug, Clone)]
pub struct Queue {
    /// The pipeline thread's queue (bounded by `budget`, not by count).
    pub tx: mpsc::UnboundedSender<Msg>,
    /// Bytes that may be queued at once.
    pub budget: Budget,
}

impl Queue {
    /// Queues `frames` once the budget has room; false when the pipeline is gone.
    pub async fn send(&self, frames: Vec<BytesMut>) -> bool {
        let bytes = frames.iter().map(|f| f.len()).sum();
        let lease = self.budget.take(bytes).await;
        self.tx.send(Msg::Frames(frames, lease)).is_ok()
    }
}
