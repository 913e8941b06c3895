//! Broadcast fan-out between sockets (Supabase Realtime's `broadcast`
//! extension): a message pushed on a channel reaches every other socket
//! joined to the same channel. Public and private channels of one topic
//! are distinct channels, as in Realtime (`config.private`).
//!
//! Each socket owns one bounded queue; the registry maps a channel to the
//! queues of its members. A member whose queue is full misses that message
//! (it is logged and counted): broadcast is best-effort in Realtime too, and
//! the terminal stream on top of it carries sequence numbers and resumes
//! from the last one received.

use super::frame::BinaryPush;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Messages one socket may have waiting from other sockets' broadcasts.
pub const QUEUE_CAPACITY: usize = 4096;

/// A channel as broadcast sees it: the topic and whether it is private.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    pub topic: String,
    pub private: bool,
}

/// What was broadcast: a JSON push (`{type, event, payload}`) or a vsn
/// 2.0.0 binary push.
#[derive(Debug, Clone)]
pub enum Body {
    Json(Value),
    Binary(BinaryPush),
}

/// One broadcast on its way to the other members of a channel.
#[derive(Debug)]
pub struct Delivery {
    pub channel: ChannelKey,
    pub body: Body,
}

type Members = Vec<(u64, mpsc::Sender<Arc<Delivery>>)>;

#[derive(Default)]
pub struct Broadcasts {
    channels: Mutex<HashMap<ChannelKey, Members>>,
    next_socket: AtomicU64,
    dropped: AtomicU64,
}

fn lock(m: &Mutex<HashMap<ChannelKey, Members>>) -> MutexGuard<'_, HashMap<ChannelKey, Members>> {
    // A panic while holding the lock leaves a consistent map (every
    // operation is a single insert or retain), so keep using it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Broadcasts {
    /// A new socket's id and the queue it reads other sockets' broadcasts
    /// from.
    pub fn socket(
        &self,
    ) -> (
        u64,
        mpsc::Sender<Arc<Delivery>>,
        mpsc::Receiver<Arc<Delivery>>,
    ) {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        (id, tx, rx)
    }

    pub fn join(&self, key: ChannelKey, socket: u64, tx: mpsc::Sender<Arc<Delivery>>) {
        let mut map = lock(&self.channels);
        let members = map.entry(key).or_default();
        members.retain(|(id, _)| *id != socket);
        members.push((socket, tx));
    }

    pub fn leave(&self, key: &ChannelKey, socket: u64) {
        let mut map = lock(&self.channels);
        if let Some(members) = map.get_mut(key) {
            members.retain(|(id, _)| *id != socket);
            if members.is_empty() {
                map.remove(key);
            }
        }
    }

    pub fn leave_all(&self, socket: u64) {
        let mut map = lock(&self.channels);
        map.retain(|_, members| {
            members.retain(|(id, _)| *id != socket);
            !members.is_empty()
        });
    }

    /// Hands `body` to every member of `channel` but the sender, in the
    /// order this is called (each queue is FIFO). Returns how many members
    /// it reached.
    pub fn publish(&self, from: u64, channel: &ChannelKey, body: Body) -> usize {
        let targets: Vec<mpsc::Sender<Arc<Delivery>>> = lock(&self.channels)
            .get(channel)
            .map(|members| {
                members
                    .iter()
                    .filter(|(id, _)| *id != from)
                    .map(|(_, tx)| tx.clone())
                    .collect()
            })
            .unwrap_or_default();
        if targets.is_empty() {
            return 0;
        }
        let delivery = Arc::new(Delivery {
            channel: channel.clone(),
            body,
        });
        let mut reached = 0;
        for tx in targets {
            match tx.try_send(delivery.clone()) {
                Ok(()) => reached += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(topic = %channel.topic, dropped_total = n, "a realtime socket is not reading its broadcasts; one was dropped for it");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        reached
    }

    /// Members of a channel (tests and diagnostics).
    pub fn members(&self, channel: &ChannelKey) -> usize {
        lock(&self.channels).get(channel).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(topic: &str, private: bool) -> ChannelKey {
        ChannelKey {
            topic: topic.into(),
            private,
        }
    }

    #[tokio::test]
    async fn reaches_other_members_in_order_not_the_sender_nor_the_other_privacy() {
        let b = Broadcasts::default();
        let (a, atx, mut arx) = b.socket();
        let (c, ctx, mut crx) = b.socket();
        let (_d, dtx, mut drx) = b.socket();
        b.join(key("realtime:t", true), a, atx);
        b.join(key("realtime:t", true), c, ctx);
        b.join(key("realtime:t", false), 99, dtx);
        for i in 0..3 {
            assert_eq!(
                b.publish(a, &key("realtime:t", true), Body::Json(json!(i))),
                1
            );
        }
        for i in 0..3 {
            match &crx.recv().await.unwrap().body {
                Body::Json(v) => assert_eq!(v, &json!(i)),
                Body::Binary(_) => panic!("binary"),
            }
        }
        assert!(arx.try_recv().is_err());
        assert!(drx.try_recv().is_err());
        b.leave_all(c);
        assert_eq!(b.members(&key("realtime:t", true)), 1);
        b.leave(&key("realtime:t", true), a);
        assert_eq!(b.members(&key("realtime:t", true)), 0);
    }
}
