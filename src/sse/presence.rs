//! Who is connected to which session: exact counts, the guard that keeps them
//! exact, and the batching of `join`/`leave` events.
//!
//! A [`PresenceGuard`] is created when a stream starts and lives *inside* the
//! response stream, so it drops whenever the stream does: client gone (write
//! failed), session deleted, server shutting down, or a handler that never got
//! to send a byte. Counting happens on the guard only, never on request hooks,
//! so rejected or aborted connects cannot leak a count.
//!
//! Joins and leaves are not published one by one: they mark the session dirty
//! and wake the flusher ([`Presence::changed`]), which waits [`WINDOW`] and
//! then takes one `join` and one `leave` batch per dirty session
//! ([`Presence::take_batches`]). When 10,000 clients connect to a session in
//! a burst, each window costs one event per subscriber, not one per joiner.
//!
//! A batch lists the distinct usernames that joined (or left) in the window,
//! sorted, at most [`MAX_NAMES`] of them; `clients` is the exact number of
//! streams open on the session when the batch was taken.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use ulid::Ulid;

/// How long joins and leaves of one session are gathered into one event.
pub const WINDOW: Duration = Duration::from_millis(100);
/// Most usernames listed in an `init`, a presence event or `/status`.
pub const MAX_NAMES: usize = 100;

#[derive(Debug, Default)]
struct Room {
    clients: usize,
    /// username → number of open streams with that name. Ordered, so a
    /// snapshot takes the first [`MAX_NAMES`] without sorting every name: an
    /// `init` costs O(100), not O(n log n), and 10,000 connects stay O(n).
    names: BTreeMap<String, usize>,
    joined: BTreeSet<String>,
    left: BTreeSet<String>,
}

/// Presence of every session; shared by all streams of one server.
#[derive(Debug, Default)]
pub struct Presence {
    rooms: Mutex<HashMap<Ulid, Room>>,
    changed: Notify,
}

/// Connected clients of one session at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub clients: usize,
    /// Distinct usernames, sorted, at most [`MAX_NAMES`].
    pub usernames: Vec<String>,
}

/// The presence events of one session for one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub session: Ulid,
    /// Distinct names that joined in the window, sorted, at most [`MAX_NAMES`].
    pub joined: Vec<String>,
    /// Distinct names that left in the window, sorted, at most [`MAX_NAMES`].
    pub left: Vec<String>,
    /// Streams open on the session when the batch was taken.
    pub clients: usize,
}

/// Counts one stream while it lives.
#[derive(Debug)]
pub struct PresenceGuard {
    presence: Arc<Presence>,
    session: Ulid,
    username: String,
}

fn capped<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    names.take(MAX_NAMES).cloned().collect()
}

impl Presence {
    /// A registry with nobody connected.
    pub fn new() -> Arc<Presence> {
        Arc::new(Presence::default())
    }

    /// Counts a new stream of `username` on `session` until the guard drops.
    pub fn join(self: &Arc<Self>, session: Ulid, username: &str) -> PresenceGuard {
        {
            let mut rooms = self.rooms.lock().expect("presence lock");
            let room = rooms.entry(session).or_default();
            room.clients += 1;
            *room.names.entry(username.to_string()).or_default() += 1;
            room.joined.insert(username.to_string());
        }
        self.changed.notify_one();
        PresenceGuard {
            presence: self.clone(),
            session,
            username: username.to_string(),
        }
    }

    fn leave(&self, session: Ulid, username: &str) {
        {
            let mut rooms = self.rooms.lock().expect("presence lock");
            let Some(room) = rooms.get_mut(&session) else {
                return;
            };
            room.clients -= 1;
            if let Some(n) = room.names.get_mut(username) {
                *n -= 1;
                if *n == 0 {
                    room.names.remove(username);
                }
            }
            room.left.insert(username.to_string());
        }
        self.changed.notify_one();
    }

    /// The clients of one session now.
    pub fn snapshot(&self, session: &Ulid) -> Snapshot {
        let rooms = self.rooms.lock().expect("presence lock");
        rooms.get(session).map(room_snapshot).unwrap_or_default()
    }

    /// The clients of every session with at least one stream open.
    pub fn all(&self) -> HashMap<Ulid, Snapshot> {
        let rooms = self.rooms.lock().expect("presence lock");
        rooms
            .iter()
            .filter(|(_, r)| r.clients > 0)
            .map(|(id, r)| (*id, room_snapshot(r)))
            .collect()
    }

    /// Streams open on all sessions.
    pub fn total_clients(&self) -> usize {
        let rooms = self.rooms.lock().expect("presence lock");
        rooms.values().map(|r| r.clients).sum()
    }

    /// Resolves once a join or leave happened since the last call (a change
    /// before the first call is remembered).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Takes the pending joins and leaves of every session, forgetting rooms
    /// that are empty and have nothing left to announce.
    pub fn take_batches(&self) -> Vec<Batch> {
        let mut rooms = self.rooms.lock().expect("presence lock");
        let mut out = Vec::new();
        rooms.retain(|id, room| {
            if !room.joined.is_empty() || !room.left.is_empty() {
                out.push(Batch {
                    session: *id,
                    joined: capped(room.joined.iter()),
                    left: capped(room.left.iter()),
                    clients: room.clients,
                });
                room.joined.clear();
                room.left.clear();
            }
            room.clients > 0
        });
        out
    }
}

fn room_snapshot(r: &Room) -> Snapshot {
    Snapshot {
        clients: r.clients,
        usernames: capped(r.names.keys()),
    }
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.presence.leave(self.session, &self.username);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_guards() {
        let p = Presence::new();
        let s = Ulid::from_parts(1, 1);
        let a = p.join(s, "ana");
        let b = p.join(s, "bo");
        let b2 = p.join(s, "bo");
        assert_eq!(
            p.snapshot(&s),
            Snapshot {
                clients: 3,
                usernames: vec!["ana".into(), "bo".into()]
            }
        );
        drop(b);
        assert_eq!(p.snapshot(&s).usernames, vec!["ana", "bo"]);
        drop(b2);
        assert_eq!(p.snapshot(&s).usernames, vec!["ana"]);
        assert_eq!(p.total_clients(), 1);
        drop(a);
        assert_eq!(p.snapshot(&s), Snapshot::default());
        assert!(p.all().is_empty());
    }

    #[test]
    fn joins_and_leaves_batch_per_window() {
        let p = Presence::new();
        let s = Ulid::from_parts(1, 1);
        let guards: Vec<_> = (0..1000).map(|i| p.join(s, &format!("u{i:04}"))).collect();
        let batches = p.take_batches();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].clients, 1000);
        assert_eq!(batches[0].joined.len(), MAX_NAMES);
        assert_eq!(batches[0].joined[0], "u0000");
        assert!(batches[0].left.is_empty());
        assert!(p.take_batches().is_empty(), "nothing new");
        drop(guards);
        let batches = p.take_batches();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].clients, 0);
        assert!(batches[0].joined.is_empty());
        assert_eq!(batches[0].left.len(), MAX_NAMES);
        assert!(
            p.rooms.lock().unwrap().is_empty(),
            "empty rooms are forgotten"
        );
    }

    #[tokio::test]
    async fn a_change_before_waiting_is_not_lost() {
        let p = Presence::new();
        let _g = p.join(Ulid::from_parts(1, 1), "a");
        tokio::time::timeout(Duration::from_secs(5), p.changed())
            .await
            .expect("the join was remembered");
    }
}
