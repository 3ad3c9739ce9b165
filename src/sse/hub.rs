//! Fan-out of committed events and presence batches to the subscribers of
//! each session.
//!
//! One bounded `tokio::sync::broadcast` channel per session with subscribers
//! (created on the first subscribe, dropped with the last one). The writer's
//! commit hook calls [`Hub::publish_event`] after the event is durable and
//! applied to the state; the frame is encoded once, and only when someone
//! listens, then shared by every receiver.
//!
//! Memory is bounded by [`CAPACITY`] frames per session however slowly a
//! subscriber reads. A subscriber that falls behind gets `Lagged` from its
//! receiver and catches up from the log itself (see [`super`]): nothing is
//! skipped silently and nothing queues without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::broadcast;
use ulid::Ulid;

use crate::event::Event;
use crate::log::{Offset, RecordKind};

use super::frame;

/// Frames buffered per session channel.
pub const CAPACITY: usize = 1024;

/// What a session's channel carries.
#[derive(Debug, Clone)]
pub enum HubMsg {
    /// A persisted event's `update`/`delete` frame. `ends` is true for a
    /// delete: the stream ends after sending it.
    Event {
        offset: Offset,
        frame: Bytes,
        ends: bool,
    },
    /// A `join`/`leave` frame (no id).
    Presence(Bytes),
}

/// The per-session channels of one server.
#[derive(Debug, Default)]
pub struct Hub {
    channels: Mutex<HashMap<Ulid, broadcast::Sender<HubMsg>>>,
}

/// A receiver of one session's channel; drops the channel with the last one.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    session: Ulid,
    rx: Option<broadcast::Receiver<HubMsg>>,
}

impl Hub {
    /// A hub with no channels.
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// Starts receiving everything published on `session` from now on.
    pub fn subscribe(self: &Arc<Self>, session: Ulid) -> Subscription {
        let mut channels = self.channels.lock().expect("hub lock");
        let rx = channels
            .entry(session)
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe();
        Subscription {
            hub: self.clone(),
            session,
            rx: Some(rx),
        }
    }

    /// Publishes a durable, applied event to the session's subscribers.
    pub fn publish_event(&self, e: &Event) {
        let channels = self.channels.lock().expect("hub lock");
        if let Some(tx) = channels.get(&e.session) {
            let _no_receiver_is_fine = tx.send(HubMsg::Event {
                offset: e.offset,
                frame: frame::persisted(e),
                ends: e.kind == RecordKind::Deleted,
            });
        }
    }

    /// Publishes a presence frame to the session's subscribers.
    pub fn publish_presence(&self, session: Ulid, frame: Bytes) {
        let channels = self.channels.lock().expect("hub lock");
        if let Some(tx) = channels.get(&session) {
            let _no_receiver_is_fine = tx.send(HubMsg::Presence(frame));
        }
    }

    /// Sessions with at least one subscriber.
    pub fn channel_count(&self) -> usize {
        self.channels.lock().expect("hub lock").len()
    }
}

impl Subscription {
    /// The next message, or `Lagged(n)` when this receiver missed `n`
    /// messages (it then continues with the oldest one still buffered).
    pub async fn recv(&mut self) -> Result<HubMsg, broadcast::error::RecvError> {
        self.rx
            .as_mut()
            .expect("receiver lives until drop")
            .recv()
            .await
    }

    /// The next message if one is waiting.
    pub fn recv_now(&mut self) -> Result<HubMsg, broadcast::error::TryRecvError> {
        self.rx
            .as_mut()
            .expect("receiver lives until drop")
            .try_recv()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut channels = self.hub.channels.lock().expect("hub lock");
        if channels
            .get(&self.session)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            channels.remove(&self.session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(offset: Offset, session: Ulid) -> Event {
        Event {
            offset,
            session,
            kind: RecordKind::Patched,
            json: Some(json!({"n": offset})),
            username: "u".into(),
            at_ms: 0,
        }
    }

    #[tokio::test]
    async fn events_reach_only_their_session_and_channels_are_dropped() {
        let hub = Hub::new();
        let (a, b) = (Ulid::from_parts(1, 1), Ulid::from_parts(2, 2));
        let mut sa = hub.subscribe(a);
        let sa2 = hub.subscribe(a);
        let mut sb = hub.subscribe(b);
        hub.publish_event(&ev(5, a));
        hub.publish_event(&ev(6, b));
        match sa.recv().await.unwrap() {
            HubMsg::Event { offset, ends, .. } => assert_eq!((offset, ends), (5, false)),
            other => panic!("{other:?}"),
        }
        match sb.recv().await.unwrap() {
            HubMsg::Event { offset, .. } => assert_eq!(offset, 6),
            other => panic!("{other:?}"),
        }
        assert_eq!(hub.channel_count(), 2);
        drop(sa);
        assert_eq!(hub.channel_count(), 2);
        drop(sa2);
        drop(sb);
        assert_eq!(hub.channel_count(), 0);
    }

    #[tokio::test]
    async fn a_slow_receiver_is_told_it_lagged() {
        let hub = Hub::new();
        let a = Ulid::from_parts(1, 1);
        let mut s = hub.subscribe(a);
        for o in 0..(CAPACITY as u64 + 10) {
            hub.publish_event(&ev(o, a));
        }
        assert!(matches!(
            s.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
    }
}
