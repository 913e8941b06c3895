//! A round-robin TCP proxy on loopback: each accepted connection goes to
//! the next backend in turn (a stand-in for the load balancer in front of
//! several hub replicas). HTTP keep-alive connections and WebSockets stay
//! on the replica they were sent to, as behind a real L4 balancer. A
//! backend that refuses the connection (a replica killed or restarting) is
//! skipped for the next one, as a balancer's passive health check would
//! (HAProxy's `redispatch`, nginx's `proxy_next_upstream`); a connection
//! already open to a replica that dies is cut, and the client reconnects.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub struct RoundRobinProxy {
    pub url: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl RoundRobinProxy {
    /// Proxies to the `http://host:port` URLs in `backends`.
    pub fn start(backends: &[&str]) -> RoundRobinProxy {
        let targets: Vec<SocketAddr> = backends
            .iter()
            .map(|u| {
                u.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .parse()
                    .expect("a backend is http://IP:PORT")
            })
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let stop = Arc::new(AtomicBool::new(false));
        let next = AtomicUsize::new(0);
        let flag = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let first = next.fetch_add(1, Ordering::Relaxed);
                let order: Vec<SocketAddr> = (0..targets.len())
                    .map(|i| targets[(first + i) % targets.len()])
                    .collect();
                std::thread::spawn(move || {
                    // Every backend refused: the client's connection is
                    // closed, as a balancer with no healthy backend would.
                    if let Some(upstream) = order.iter().find_map(|t| TcpStream::connect(t).ok()) {
                        let _ = pipe(client, upstream);
                    }
                });
            }
        });
        RoundRobinProxy {
            url: format!("http://{addr}"),
            addr,
            stop,
        }
    }
}

fn pipe(client: TcpStream, upstream: TcpStream) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut c_read, mut u_write) = (client.try_clone()?, upstream.try_clone()?);
    let forward = std::thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut u_write);
        let _ = u_write.shutdown(Shutdown::Write);
    });
    let (mut u_read, mut c_write) = (upstream, client);
    let _ = io::copy(&mut u_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = forward.join();
    Ok(())
}

impl Drop for RoundRobinProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}
