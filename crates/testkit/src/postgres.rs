//! A throwaway PostgreSQL cluster for the hub's tests, and the choice of
//! backend a test's hubs run on.
//!
//! One cluster per test binary, started on first use: `initdb` into a temp
//! directory, `postgres` on a free loopback port (trust authentication, no
//! fsync: nothing here must survive a crash). `initdb` and `postgres`
//! refuse to run as root, so when the tests run as root both run as the
//! `postgres` user, in a directory that user owns. Each hub gets a fresh
//! database (`CREATE DATABASE` from `template1`, a few tens of
//! milliseconds). The server is stopped and its directory removed when the
//! test binary exits, and it dies with the binary if that is killed.
//!
//! The bench starts its own cluster with its own settings
//! ([`Cluster::spawn`]).
//!
//! Binaries: `PANORAMA_TEST_PG_BIN`, else `pg_config --bindir`, else
//! `/usr/lib/postgresql/*/bin` (`.ci/run` installs the `postgresql`
//! package where it is missing).

use std::cell::Cell;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// Which database the hubs a test starts keep their state in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

thread_local! {
    static CHOSEN: Cell<Option<Backend>> = const { Cell::new(None) };
}

/// The backend for hubs started on this thread: the one [`on_backend`]
/// chose, else `PANORAMA_TEST_BACKEND` (`sqlite` or `postgres`), else
/// SQLite.
pub fn backend() -> Backend {
    CHOSEN.with(Cell::get).unwrap_or_else(|| {
        match std::env::var("PANORAMA_TEST_BACKEND").as_deref() {
            Ok("postgres") | Ok("postgresql") | Ok("pg") => Backend::Postgres,
            _ => Backend::Sqlite,
        }
    })
}

/// Runs `f` with hubs started on this thread using `backend`.
pub fn on_backend<R>(backend: Backend, f: impl FnOnce() -> R) -> R {
    let _chosen = choose(backend);
    f()
}

/// Chooses the backend for this thread until the guard drops (for async
/// tests on a current-thread runtime, whose futures run on this thread).
pub fn choose(backend: Backend) -> Chosen {
    Chosen(CHOSEN.with(|c| c.replace(Some(backend))))
}

/// Restores the previous choice when dropped.
pub struct Chosen(Option<Backend>);

impl Drop for Chosen {
    fn drop(&mut self) {
        CHOSEN.with(|c| c.set(self.0));
    }
}

/// Declares each test twice, as `<name>::sqlite` and `<name>::postgres`:
/// the same body, its hubs on one backend then the other. `fn` items
/// become `#[test]`s, `async fn` items `#[tokio::test]`s.
///
/// ```ignore
/// panorama_testkit::on_both_backends! {
///     fn pairing_works() { let hub = Hub::start(); /* … */ }
/// }
/// ```
#[macro_export]
macro_rules! on_both_backends {
    () => {};
    ($(#[$meta:meta])* fn $name:ident() $body:block $($rest:tt)*) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body() $body
            #[test]
            $(#[$meta])*
            fn sqlite() {
                $crate::on_backend($crate::Backend::Sqlite, body)
            }
            #[test]
            $(#[$meta])*
            fn postgres() {
                $crate::on_backend($crate::Backend::Postgres, body)
            }
        }
        $crate::on_both_backends! { $($rest)* }
    };
    ($(#[$meta:meta])* async fn $name:ident() $body:block $($rest:tt)*) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn body() $body
            #[tokio::test]
            $(#[$meta])*
            async fn sqlite() {
                let _chosen = $crate::postgres::choose($crate::Backend::Sqlite);
                body().await
            }
            #[tokio::test]
            $(#[$meta])*
            async fn postgres() {
                let _chosen = $crate::postgres::choose($crate::Backend::Postgres);
                body().await
            }
        }
        $crate::on_both_backends! { $($rest)* }
    };
}

/// The running cluster of this test binary.
pub struct Cluster {
    pub port: u16,
    bin: PathBuf,
    pid: i32,
    dir: PathBuf,
    stopped: std::sync::atomic::AtomicBool,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// Server settings of the tests' cluster: speed over durability (nothing
/// here must survive a crash).
pub const TEST_SETTINGS: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "400"),
    ("shared_buffers", "64MB"),
    ("log_min_messages", "fatal"),
];

/// The test binary's cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let c = Cluster::spawn(TEST_SETTINGS);
        register_cleanup(&c);
        c
    })
}

/// A fresh, empty database; returns its URL.
pub fn fresh_database() -> String {
    cluster().create_database()
}

/// Whether PostgreSQL's server binaries can be found (for a test that
/// skips, loudly, where they cannot).
pub fn installed() -> bool {
    find_pg_bin_dir().is_some()
}

fn pg_bin_dir() -> PathBuf {
    find_pg_bin_dir().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed: the hub's PostgreSQL tests need initdb and postgres \
             (apt-get install postgresql, or set PANORAMA_TEST_PG_BIN to their directory)"
        )
    })
}

fn find_pg_bin_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PANORAMA_TEST_PG_BIN") {
        return Some(PathBuf::from(p));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

/// `(uid, gid)` of the `postgres` user when we are root (initdb refuses
/// root); `None` when we are not.
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns NULL or a pointer to static storage, read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root, and there is no `postgres` user to run PostgreSQL as (install the postgresql package)"
    );
    // SAFETY: checked non-null above.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn command(bin: &Path, tool: &str, user: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin.join(tool));
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
        // Root's supplementary groups must not follow.
        // SAFETY: setgroups is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0 {
                    let err = std::io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::EPERM) {
                        return Err(err);
                    }
                }
                Ok(())
            });
        }
    }
    cmd.env("LC_ALL", "C").env_remove("PGDATA");
    cmd
}

impl Cluster {
    /// Starts a cluster with the server `settings` (`-c name=value`
    /// each), from a thread that lives as long as the process: the
    /// server's parent-death signal follows the thread that forked it, so
    /// it must not be a pool thread that may exit. The server is stopped
    /// when the returned value is dropped (or, at the latest, dies with
    /// this process).
    pub fn spawn(settings: &[(&str, &str)]) -> Cluster {
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("postgres-cluster".into())
            .spawn(move || {
                let started = std::panic::catch_unwind(|| Cluster::start(&settings));
                let _ = tx.send(started);
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the cluster thread");
        match rx.recv().expect("the cluster thread answers") {
            Ok(c) => c,
            Err(e) => std::panic::resume_unwind(e),
        }
    }

    fn start(settings: &[(String, String)]) -> Cluster {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let bin = pg_bin_dir();
        let user = run_as();
        let dir = tempfile::Builder::new()
            .prefix("panorama-pg-")
            .tempdir()
            .expect("temp dir for PostgreSQL")
            .keep();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the cluster dir");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .expect("chmod the cluster dir");
        let data = dir.join("data");
        let out = command(&bin, "initdb", user)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ])
            .stdout(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut cmd = command(&bin, "postgres", user);
        cmd.arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(
                settings
                    .iter()
                    .flat_map(|(k, v)| ["-c".to_string(), format!("{k}={v}")]),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe. The server dies with the
        // thread that started it (which lives as long as the test binary).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start postgres");
        let cluster = Cluster {
            port,
            bin,
            pid: child.id() as i32,
            dir,
            stopped: std::sync::atomic::AtomicBool::new(false),
        };
        // The child is reaped at exit by `stop`; don't let Child's drop
        // (which does nothing) mislead: we keep only the pid.
        std::mem::forget(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(cluster.bin.join("pg_isready"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-q",
                ])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not accept connections on 127.0.0.1:{port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The server's process id (its backends are its children).
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn create_database(&self) -> String {
        let name = format!("hub_{}", uuid::Uuid::new_v4().simple());
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg(&name)
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// Stops the server (immediate shutdown) and removes its directory;
    /// once.
    fn stop(&self) {
        if self.stopped.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // SAFETY: plain syscalls on our own child's pid.
        unsafe {
            libc::kill(self.pid, libc::SIGQUIT);
            let mut status = 0;
            libc::waitpid(self.pid, &mut status, 0);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn register_cleanup(_: &Cluster) {
    extern "C" fn stop_cluster() {
        if let Some(c) = CLUSTER.get() {
            c.stop();
        }
    }
    // SAFETY: registering a plain extern "C" fn.
    unsafe {
        libc::atexit(stop_cluster);
    }
}
