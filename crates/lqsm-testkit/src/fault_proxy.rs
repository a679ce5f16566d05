//! A fault-injecting TCP proxy for loopback tests: it forwards connections to a
//! target, and can be told to partition (blackhole: connections are accepted and
//! kept, but no byte gets through either way, as when a network path silently
//! drops packets) and to heal (every connection of the partition is closed, so
//! requests stuck in it fail, and forwarding resumes).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often a blocked copy looks whether the proxy's mode changed.
const CHECK_EVERY: Duration = Duration::from_millis(20);

struct Shared {
    /// No byte gets through while set.
    partitioned: AtomicBool,
    /// Bumped on heal and on drop: connections of an older generation close.
    generation: AtomicU64,
    stopped: AtomicBool,
}

/// A running proxy; it stops forwarding and closes everything on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Listens on a random loopback port and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> FaultProxy {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), target)
    }

    /// Listens on `listen` (e.g. the address of a proxy dropped before, to bring a path
    /// back) and forwards every connection to `target`. A dropped proxy refuses
    /// connections and has closed every one it forwarded: the target looks down.
    pub fn start_at(listen: SocketAddr, target: SocketAddr) -> FaultProxy {
        // A proxy just dropped lets its port go within one CHECK_EVERY.
        let listener =
            crate::wait::eventually(&format!("the proxy's port {listen} to be free"), || {
                TcpListener::bind(listen).ok()
            });
        let addr = listener.local_addr().expect("the proxy's address");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let shared = Arc::new(Shared {
            partitioned: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        std::thread::spawn(move || accept_loop(&listener, target, &accept_shared));
        FaultProxy { addr, shared }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on nothing gets through, in either direction, on any connection.
    pub fn partition(&self) {
        self.shared.partitioned.store(true, Ordering::SeqCst);
    }

    /// Closes every connection made before now, and forwards again.
    pub fn heal(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        self.shared.partitioned.store(false, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    while !shared.stopped.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let shared = shared.clone();
                std::thread::spawn(move || serve(client, target, &shared));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(CHECK_EVERY),
            Err(_) => std::thread::sleep(CHECK_EVERY),
        }
    }
}

/// Forwards one connection both ways until either side closes or its generation
/// ends. While partitioned, what arrives is read and dropped.
fn serve(client: TcpStream, target: SocketAddr, shared: &Arc<Shared>) {
    let generation = shared.generation.load(Ordering::SeqCst);
    // A connection opened during a partition never reaches the target.
    while shared.partitioned.load(Ordering::SeqCst) {
        if shared.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        std::thread::sleep(CHECK_EVERY);
    }
    let Ok(upstream) = TcpStream::connect(target) else {
        return;
    };
    let (Ok(client_too), Ok(upstream_too)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let back_shared = shared.clone();
    let back = std::thread::spawn(move || copy(upstream_too, client_too, generation, &back_shared));
    copy(client, upstream, generation, shared);
    let _ = back.join();
}

fn copy(mut from: TcpStream, mut to: TcpStream, generation: u64, shared: &Shared) {
    let _ = from.set_read_timeout(Some(CHECK_EVERY));
    let mut buf = [0u8; 16 * 1024];
    loop {
        if shared.generation.load(Ordering::SeqCst) != generation {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if shared.partitioned.load(Ordering::SeqCst) {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
