//! Where the scenarios run: one hub on SQLite, or N hub replicas on one
//! PostgreSQL database of a throwaway cluster the bench starts (testkit's
//! `postgres::Cluster`, with the bench's own settings). P1–P5 reach the
//! replicas through the front: the hub itself, or a round-robin TCP proxy
//! in front of the replicas (testkit's, standing in for the load balancer
//! of a real deployment), so a gateway's HTTP connections and its socket
//! land on different replicas. P6 connects its simulated gateways to the
//! replicas directly (see `sim.rs`).

use crate::hub::Hub;
use anyhow::{anyhow, bail, Result};
use panorama_testkit::postgres::Cluster;
use panorama_testkit::RoundRobinProxy;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One backend and a replica count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub backend: Backend,
    pub replicas: usize,
}

impl Setup {
    /// `--backend` and `--replicas` checked together.
    pub fn parse(backend: &str, replicas: usize) -> Result<Setup> {
        let backend = match backend.to_ascii_lowercase().as_str() {
            "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" | "pg" => Backend::Postgres,
            other => bail!("unknown --backend {other:?}: use sqlite or postgres"),
        };
        if replicas == 0 {
            bail!("--replicas must be at least 1");
        }
        if backend == Backend::Sqlite && replicas > 1 {
            bail!("SQLite runs one hub process: --replicas {replicas} needs --backend postgres");
        }
        Ok(Setup { backend, replicas })
    }

    /// SQLite, PostgreSQL with one replica, PostgreSQL with three.
    pub fn matrix() -> Vec<Setup> {
        vec![
            Setup {
                backend: Backend::Sqlite,
                replicas: 1,
            },
            Setup {
                backend: Backend::Postgres,
                replicas: 1,
            },
            Setup {
                backend: Backend::Postgres,
                replicas: 3,
            },
        ]
    }

    pub fn label(&self) -> String {
        match self.backend {
            Backend::Sqlite => "SQLite".into(),
            Backend::Postgres => format!("PG×{}", self.replicas),
        }
    }
}

/// PostgreSQL server settings for the bench: durable storage (fsync and
/// full-page writes on, unlike the tests' cluster), commits acknowledged
/// before their WAL flush unless `synchronous_commit` is `on` — by default
/// the durability class of the hub's SQLite (WAL, `synchronous=NORMAL`): a
/// crash may lose the last moments, never corrupts. Room for every
/// replica's pool (16) and listener.
pub fn pg_settings(synchronous_commit: bool) -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "synchronous_commit",
            if synchronous_commit { "on" } else { "off" },
        ),
        ("max_connections", "200"),
        ("shared_buffers", "128MB"),
        ("log_min_messages", "fatal"),
    ]
}

/// Starts the bench's PostgreSQL cluster (testkit panics with the reason
/// when it cannot; that becomes an error here).
pub fn start_cluster(synchronous_commit: bool) -> Result<Cluster> {
    let settings = pg_settings(synchronous_commit);
    std::panic::catch_unwind(|| Cluster::spawn(&settings))
        .map_err(|e| anyhow!("PostgreSQL could not be started: {}", panic_text(&e)))
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "see the message above".into())
}

/// The hubs of one setup.
pub struct Deployment {
    pub replicas: Vec<Arc<Hub>>,
    /// What gateways and the bench's own requests use in P1–P5.
    pub front: Arc<Hub>,
    _proxy: Option<RoundRobinProxy>,
}

impl Deployment {
    /// Starts the hubs: on PostgreSQL, on a fresh database of `cluster`.
    pub fn start(bin: &Path, setup: Setup, cluster: Option<&Cluster>) -> Result<Deployment> {
        let database = match (setup.backend, cluster) {
            (Backend::Sqlite, _) => None,
            (Backend::Postgres, Some(c)) => Some(
                std::panic::catch_unwind(|| c.create_database())
                    .map_err(|e| anyhow!("creating the database: {}", panic_text(&e)))?,
            ),
            (Backend::Postgres, None) => bail!("a PostgreSQL setup needs the cluster"),
        };
        let first = Arc::new(Hub::start(bin, database.as_deref(), None)?);
        let mut replicas = vec![first.clone()];
        for _ in 1..setup.replicas {
            replicas.push(Arc::new(Hub::start(
                bin,
                database.as_deref(),
                Some(&first),
            )?));
        }
        let (front, proxy) = if replicas.len() == 1 {
            (first, None)
        } else {
            let urls: Vec<&str> = replicas.iter().map(|h| h.url.as_str()).collect();
            let proxy = RoundRobinProxy::start(&urls);
            (Arc::new(first.via(&proxy.url)?), Some(proxy))
        };
        Ok(Deployment {
            replicas,
            front,
            _proxy: proxy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setups_parse_and_refuse_sqlite_replicas() {
        let s = Setup::parse("postgres", 3).unwrap();
        assert_eq!(
            (s.backend, s.replicas, s.label()),
            (Backend::Postgres, 3, "PG×3".into())
        );
        assert_eq!(Setup::parse("SQLite", 1).unwrap().label(), "SQLite");
        let err = Setup::parse("sqlite", 2).unwrap_err().to_string();
        assert!(err.contains("needs --backend postgres"), "{err}");
        assert!(Setup::parse("mysql", 1).is_err());
        assert!(Setup::parse("pg", 0).is_err());
        assert_eq!(
            Setup::matrix().iter().map(Setup::label).collect::<Vec<_>>(),
            ["SQLite", "PG×1", "PG×3"]
        );
    }
}
