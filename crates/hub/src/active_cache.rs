//! "Is this gateway / person session still active?" answered without a
//! store round trip on every request.
//!
//! The cache remembers only positive answers ("gateway G of team T, on
//! session S, is active"; "person session S is active"), each for at most
//! the TTL. Whatever can end activity removes them at once:
//!
//! * row changes on the change feed (a gateway revoked, moved to another
//!   team or deleted, a team deleted: see `crate::changes::invalidations_of`),
//! * revocations that are not row changes (refresh-token reuse detection
//!   ending a session, a person signing out), published as
//!   [`Invalidation`]s by the store's transaction.
//!
//! Both arrive synchronously: the local replica applies them before its
//! write returns, and on PostgreSQL the other replicas' change listener
//! applies them as their NOTIFY arrives (delivered on commit, in commit
//! order). A negative answer is never cached.
//!
//! **When the feed cannot be trusted the cache is not used.** On
//! PostgreSQL the listener pings itself through the database every
//! [`LISTENER_PING`]; PostgreSQL delivers notifications in commit order,
//! so when a ping sent at instant *t* comes back, every revocation
//! committed before *t* has been applied ([`ActiveCache::feed_synced`]).
//! An answer is used only while the last such instant is younger than
//! [`LISTENER_LEASE`]; a listener that lost its connection drops the
//! cache ([`ActiveCache::feed_lost`]), and one that is silently gone or
//! lagging stops being trusted when its lease runs out. So a replica
//! honours a revocation made anywhere within the NOTIFY's delivery time,
//! and never later than the lease, whatever happens to its listener.
//!
//! Races between a store read and an invalidation are closed by a
//! generation counter: [`ActiveCache::lookup`] hands out a [`Ticket`]
//! taken *before* the read, and [`ActiveCache::remember`] drops the answer
//! if anything was invalidated (or the feed went down or came back) since.
//!
//! Pure: time is passed in, so the rules are unit-tested below.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default lifetime of a cached positive answer (defence in depth: the
/// feed is what ends an answer early).
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// How often the PostgreSQL change listener pings itself.
pub const LISTENER_PING: Duration = Duration::from_millis(250);

/// How long after its last confirmed sync point a PostgreSQL listener's
/// invalidations are trusted: the longest a revocation can go unseen by a
/// replica whose listener silently died or fell behind.
pub const LISTENER_LEASE: Duration = Duration::from_secs(1);

/// Above this many entries the cache is emptied (bounds memory; at one
/// entry per live gateway and signed-in session it is never reached in
/// practice).
const MAX_ENTRIES: usize = 250_000;

/// Something that ends activity, as the store publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", content = "id", rename_all = "snake_case")]
pub enum Invalidation {
    /// A gateway row was revoked, moved or deleted.
    Gateway(String),
    /// A gateway's auth session was revoked (refresh-token reuse).
    GatewaySession(String),
    /// A person's session ended (sign-out, refresh-token reuse).
    UserSession(String),
    /// Every session of a person ended (global sign-out).
    User(String),
    /// A team was deleted, and its gateways with it.
    Team(String),
}

/// Whose activity is asked about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Gateway {
        gateway_id: String,
        team_id: String,
        session_id: String,
    },
    UserSession {
        user_id: String,
        session_id: String,
    },
}

impl Subject {
    fn ended_by(&self, inv: &Invalidation) -> bool {
        match (self, inv) {
            (Subject::Gateway { gateway_id, .. }, Invalidation::Gateway(id)) => gateway_id == id,
            (Subject::Gateway { session_id, .. }, Invalidation::GatewaySession(id)) => {
                session_id == id
            }
            (Subject::Gateway { team_id, .. }, Invalidation::Team(id)) => team_id == id,
            (Subject::UserSession { session_id, .. }, Invalidation::UserSession(id)) => {
                session_id == id
            }
            (Subject::UserSession { user_id, .. }, Invalidation::User(id)) => user_id == id,
            _ => false,
        }
    }
}

/// Taken before a store read; [`ActiveCache::remember`] accepts the answer
/// only if nothing was invalidated since.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    generation: u64,
    taken_at: Instant,
}

#[derive(Debug)]
pub enum Lookup {
    /// Known active: no store read needed.
    Active,
    /// Ask the store, then [`ActiveCache::remember`] a positive answer.
    Unknown(Ticket),
}

/// Where invalidations come from.
#[derive(Debug, Clone, Copy)]
enum Feed {
    /// This process makes every change (SQLite): always complete.
    InProcess,
    /// A database listener; `synced_at` is the last instant before which
    /// every committed revocation is known to have been applied, `None`
    /// while it is disconnected.
    Listener { synced_at: Option<Instant> },
}

/// Counters for `/metrics` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub hits: u64,
    pub misses: u64,
    /// Whether answers may be served right now.
    pub trusted: bool,
    /// Times the listener's connection was lost (and the cache dropped).
    pub feed_losses: u64,
}

struct Inner {
    generation: u64,
    entries: HashMap<Subject, Instant>,
    feed: Feed,
    ttl: Duration,
    hits: u64,
    misses: u64,
    feed_losses: u64,
}

impl Inner {
    fn trusted(&self, now: Instant) -> bool {
        !self.ttl.is_zero()
            && match self.feed {
                Feed::InProcess => true,
                Feed::Listener {
                    synced_at: Some(at),
                } => now.saturating_duration_since(at) < LISTENER_LEASE,
                Feed::Listener { synced_at: None } => false,
            }
    }

    fn forget_all(&mut self) {
        self.entries.clear();
        self.generation += 1;
    }
}

pub struct ActiveCache {
    inner: Mutex<Inner>,
}

impl Default for ActiveCache {
    fn default() -> Self {
        ActiveCache::new(DEFAULT_TTL)
    }
}

impl ActiveCache {
    /// A cache fed in-process (one hub on SQLite); `ttl` zero disables it.
    pub fn new(ttl: Duration) -> Self {
        ActiveCache {
            inner: Mutex::new(Inner {
                generation: 0,
                entries: HashMap::new(),
                feed: Feed::InProcess,
                ttl,
                hits: 0,
                misses: 0,
                feed_losses: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_ttl(&self, ttl: Duration) {
        let mut inner = self.lock();
        inner.ttl = ttl;
        inner.forget_all();
    }

    /// From now on invalidations come from a database listener, which must
    /// confirm it is in sync ([`Self::feed_synced`]) before answers are
    /// served.
    pub fn fed_by_listener(&self) {
        let mut inner = self.lock();
        inner.feed = Feed::Listener { synced_at: None };
        inner.forget_all();
    }

    pub fn lookup(&self, subject: &Subject, now: Instant) -> Lookup {
        let mut inner = self.lock();
        if inner.trusted(now) {
            if let Some(at) = inner.entries.get(subject) {
                if now.saturating_duration_since(*at) < inner.ttl {
                    inner.hits += 1;
                    return Lookup::Active;
                }
                inner.entries.remove(subject);
            }
        }
        inner.misses += 1;
        Lookup::Unknown(Ticket {
            generation: inner.generation,
            taken_at: now,
        })
    }

    /// Remembers that `subject` was found active by a read that started
    /// when `ticket` was taken, unless something was invalidated since or
    /// the feed is not trusted.
    pub fn remember(&self, subject: Subject, ticket: Ticket, now: Instant) {
        let mut inner = self.lock();
        if ticket.generation != inner.generation || !inner.trusted(now) {
            return;
        }
        if inner.entries.len() >= MAX_ENTRIES {
            inner.entries.clear();
        }
        // The answer's age counts from before the read.
        inner.entries.insert(subject, ticket.taken_at);
    }

    pub fn invalidate(&self, inv: &Invalidation) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.retain(|s, _| !s.ended_by(inv));
    }

    /// Forgets every answer (a revocation this replica cannot read).
    pub fn clear(&self) {
        self.lock().forget_all();
    }

    /// The listener has applied every change committed before `as_of`.
    pub fn feed_synced(&self, as_of: Instant) {
        let mut inner = self.lock();
        if let Feed::Listener { synced_at } = inner.feed {
            if synced_at.is_none() {
                // Back after a loss: reads begun while down may have missed
                // revocations, so their tickets must not count.
                inner.forget_all();
            }
            let newest = synced_at.map_or(as_of, |s| s.max(as_of));
            inner.feed = Feed::Listener {
                synced_at: Some(newest),
            };
        }
    }

    /// The listener lost its connection: changes may be missed until it is
    /// back, so nothing cached can be trusted.
    pub fn feed_lost(&self) {
        let mut inner = self.lock();
        if let Feed::Listener { .. } = inner.feed {
            inner.feed = Feed::Listener { synced_at: None };
            inner.feed_losses += 1;
            inner.forget_all();
        }
    }

    pub fn stats(&self, now: Instant) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            entries: inner.entries.len(),
            hits: inner.hits,
            misses: inner.misses,
            trusted: inner.trusted(now),
            feed_losses: inner.feed_losses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(id: &str, team: &str, session: &str) -> Subject {
        Subject::Gateway {
            gateway_id: id.into(),
            team_id: team.into(),
            session_id: session.into(),
        }
    }

    fn person(user: &str, session: &str) -> Subject {
        Subject::UserSession {
            user_id: user.into(),
            session_id: session.into(),
        }
    }

    fn ticket(c: &ActiveCache, s: &Subject, now: Instant) -> Ticket {
        match c.lookup(s, now) {
            Lookup::Unknown(t) => t,
            Lookup::Active => panic!("expected a miss for {s:?}"),
        }
    }

    fn cached(c: &ActiveCache, s: &Subject, now: Instant) -> bool {
        matches!(c.lookup(s, now), Lookup::Active)
    }

    #[test]
    fn a_remembered_answer_is_served_until_its_ttl() {
        let c = ActiveCache::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let s = gw("g", "t", "s");
        let tk = ticket(&c, &s, t0);
        c.remember(s.clone(), tk, t0 + Duration::from_millis(2));
        assert!(cached(&c, &s, t0 + Duration::from_secs(4)));
        // The age counts from the ticket, i.e. from before the read.
        assert!(!cached(&c, &s, t0 + Duration::from_secs(5)));
        let st = c.stats(t0);
        assert_eq!((st.hits, st.misses, st.entries), (1, 2, 0));
    }

    #[test]
    fn each_invalidation_ends_exactly_the_answers_it_names() {
        let c = ActiveCache::new(Duration::from_secs(60));
        let now = Instant::now();
        let subjects = [
            gw("g1", "t1", "s1"),
            gw("g2", "t1", "s2"),
            gw("g3", "t2", "s3"),
            person("u1", "p1"),
            person("u1", "p2"),
            person("u2", "p3"),
        ];
        let fill = |c: &ActiveCache| {
            for s in &subjects {
                if let Lookup::Unknown(tk) = c.lookup(s, now) {
                    c.remember(s.clone(), tk, now);
                }
            }
        };
        let cases: [(Invalidation, &[usize]); 5] = [
            (Invalidation::Gateway("g1".into()), &[0]),
            (Invalidation::GatewaySession("s2".into()), &[1]),
            (Invalidation::Team("t1".into()), &[0, 1]),
            (Invalidation::UserSession("p2".into()), &[4]),
            (Invalidation::User("u1".into()), &[3, 4]),
        ];
        for (inv, ended) in cases {
            fill(&c);
            c.invalidate(&inv);
            for (i, s) in subjects.iter().enumerate() {
                assert_eq!(
                    cached(&c, s, now),
                    !ended.contains(&i),
                    "{inv:?} and subject {s:?}"
                );
            }
        }
    }

    #[test]
    fn an_answer_read_across_an_invalidation_is_not_remembered() {
        let c = ActiveCache::new(Duration::from_secs(60));
        let now = Instant::now();
        let s = gw("g", "t", "s");
        let tk = ticket(&c, &s, now);
        // The store said "active", but the gateway was revoked before the
        // answer came back: the answer may be stale.
        c.invalidate(&Invalidation::Gateway("g".into()));
        c.remember(s.clone(), tk, now);
        assert!(!cached(&c, &s, now));
        // Even an unrelated invalidation voids it (one counter for all).
        let tk = ticket(&c, &s, now);
        c.invalidate(&Invalidation::Gateway("other".into()));
        c.remember(s.clone(), tk, now);
        assert!(!cached(&c, &s, now));
    }

    #[test]
    fn a_listener_fed_cache_serves_nothing_before_its_first_sync() {
        let c = ActiveCache::new(Duration::from_secs(60));
        c.fed_by_listener();
        let t0 = Instant::now();
        let s = person("u", "p");
        let tk = ticket(&c, &s, t0);
        c.remember(s.clone(), tk, t0);
        assert!(!cached(&c, &s, t0), "not synced yet");
        assert!(!c.stats(t0).trusted);
        c.feed_synced(t0);
        // The first sync voids tickets taken while the feed was down.
        c.remember(s.clone(), tk, t0);
        assert!(!cached(&c, &s, t0));
        let tk = ticket(&c, &s, t0);
        c.remember(s.clone(), tk, t0);
        assert!(cached(&c, &s, t0 + Duration::from_millis(10)));
    }

    #[test]
    fn a_listener_that_stops_confirming_is_not_trusted_after_its_lease() {
        let c = ActiveCache::new(Duration::from_secs(60));
        c.fed_by_listener();
        let t0 = Instant::now();
        c.feed_synced(t0);
        let s = gw("g", "t", "s");
        let tk = ticket(&c, &s, t0);
        c.remember(s.clone(), tk, t0);
        let just_before = t0 + LISTENER_LEASE - Duration::from_millis(1);
        assert!(cached(&c, &s, just_before));
        assert!(!cached(&c, &s, t0 + LISTENER_LEASE), "lease ran out");
        // A late sync (a lagging listener caught up, in commit order)
        // makes the remaining answers usable again.
        c.feed_synced(t0 + LISTENER_LEASE);
        assert!(cached(&c, &s, t0 + LISTENER_LEASE));
        // An older sync point never moves the lease back.
        c.feed_synced(t0);
        assert!(cached(
            &c,
            &s,
            t0 + LISTENER_LEASE + Duration::from_millis(500)
        ));
    }

    #[test]
    fn losing_the_listener_drops_everything_and_voids_tickets() {
        let c = ActiveCache::new(Duration::from_secs(60));
        c.fed_by_listener();
        let t0 = Instant::now();
        c.feed_synced(t0);
        let (a, b) = (gw("g", "t", "s"), person("u", "p"));
        let tk = ticket(&c, &a, t0);
        c.remember(a.clone(), tk, t0);
        let pending = ticket(&c, &b, t0);
        c.feed_lost();
        assert_eq!(c.stats(t0).entries, 0);
        assert_eq!(c.stats(t0).feed_losses, 1);
        assert!(!cached(&c, &a, t0));
        c.feed_synced(t0 + Duration::from_millis(100));
        c.remember(b.clone(), pending, t0 + Duration::from_millis(100));
        assert!(!cached(&c, &b, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn a_zero_ttl_disables_the_cache() {
        let c = ActiveCache::new(Duration::ZERO);
        let now = Instant::now();
        let s = gw("g", "t", "s");
        let tk = ticket(&c, &s, now);
        c.remember(s.clone(), tk, now);
        assert!(!cached(&c, &s, now));
    }

    #[test]
    fn in_process_feeds_ignore_listener_signals() {
        let c = ActiveCache::new(Duration::from_secs(60));
        let now = Instant::now();
        c.feed_lost();
        let s = gw("g", "t", "s");
        let tk = ticket(&c, &s, now);
        c.remember(s.clone(), tk, now);
        assert!(cached(&c, &s, now));
        assert_eq!(c.stats(now).feed_losses, 0);
    }

    #[test]
    fn invalidations_round_trip_through_json() {
        for inv in [
            Invalidation::Gateway("g".into()),
            Invalidation::GatewaySession("s".into()),
            Invalidation::UserSession("p".into()),
            Invalidation::User("u".into()),
            Invalidation::Team("t".into()),
        ] {
            let text = serde_json::to_string(&inv).unwrap();
            assert_eq!(serde_json::from_str::<Invalidation>(&text).unwrap(), inv);
        }
        assert_eq!(
            serde_json::to_value(Invalidation::User("u".into())).unwrap(),
            serde_json::json!({"k": "user", "id": "u"})
        );
    }
}
