//! A fault-injecting TCP proxy for loopback tests. It forwards connections to a target
//! and can be told, at any moment, to
//!
//! - **delay**: hold every chunk of bytes, either way, for a set latency before passing
//!   it on (chunks keep their order; the latency does not add up along a connection);
//! - **drop**: give up each chunk with a set probability, and close its connection
//!   (FIN) without passing the chunk on: a request that never arrives, or an answer
//!   lost after the target acted on the request; also all open connections at once;
//! - **reset**: close every open connection with a TCP reset (RST), both ways;
//! - **partition** (blackhole): connections are accepted and kept, but no byte gets
//!   through either way, as when a network path silently drops packets, until it
//!   **heals** (every connection of the partition is closed, so requests stuck in it
//!   fail, and forwarding resumes).
//!
//! Small on purpose: two threads per direction of a connection (one reads, one delivers
//! when the chunk is due), each looking every [`CHECK_EVERY`] whether its connection
//! must end. Random drops come from a seeded generator ([`FaultProxy::seed`]); the
//! timing is real, so a run is not replayed bit for bit.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a blocked thread looks whether its connection must end.
const CHECK_EVERY: Duration = Duration::from_millis(20);

/// How the faults injected so far added up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Connections accepted.
    pub connections: u64,
    /// Chunks held back by a delay before they were passed on.
    pub delayed_chunks: u64,
    /// Chunks given up by the drop rate (each closed its connection).
    pub dropped_chunks: u64,
    /// Connections the proxy closed with a FIN: by a drop, [`FaultProxy::drop_connections`]
    /// or [`FaultProxy::heal`].
    pub cut_connections: u64,
    /// Connections the proxy closed with a reset.
    pub reset_connections: u64,
    /// Chunks swallowed by a partition.
    pub blackholed_chunks: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    delayed_chunks: AtomicU64,
    dropped_chunks: AtomicU64,
    cut_connections: AtomicU64,
    reset_connections: AtomicU64,
    blackholed_chunks: AtomicU64,
}

struct Shared {
    /// No byte gets through while set.
    partitioned: AtomicBool,
    /// Latency added to every chunk, in milliseconds.
    delay_ms: AtomicU64,
    /// The chance that a chunk is dropped, in millionths.
    drop_per_million: AtomicU64,
    /// Bumped when every open connection must end (heal, drop, reset, the proxy
    /// dropped): connections of an older generation end.
    generation: AtomicU64,
    /// The generations that ended with a reset rather than a FIN.
    reset_generations: Mutex<HashSet<u64>>,
    /// The drop generator's state (SplitMix64).
    rng: Mutex<u64>,
    stopped: AtomicBool,
    counters: Counters,
}

impl Shared {
    /// Ends every open connection, with a reset or a FIN.
    fn end_generation(&self, reset: bool) {
        let mut resets = self.reset_generations.lock().expect("the proxy's lock");
        let ended = self.generation.fetch_add(1, Ordering::SeqCst);
        if reset {
            resets.insert(ended);
        }
    }

    /// Whether the next chunk is to be dropped.
    fn roll_drop(&self) -> bool {
        let per_million = self.drop_per_million.load(Ordering::SeqCst);
        if per_million == 0 {
            return false;
        }
        let mut state = self.rng.lock().expect("the proxy's lock");
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z % 1_000_000 < per_million
    }
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
            delay_ms: AtomicU64::new(0),
            drop_per_million: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            reset_generations: Mutex::new(HashSet::new()),
            rng: Mutex::new(u64::from(addr.port())),
            stopped: AtomicBool::new(false),
            counters: Counters::default(),
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

    /// Seeds the generator that picks the chunks to drop (by default the proxy's
    /// port seeds it).
    pub fn seed(&self, seed: u64) {
        *self.shared.rng.lock().expect("the proxy's lock") = seed;
    }

    /// From now on every chunk waits `latency` before it is passed on (zero: none).
    pub fn set_delay(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// From now on each chunk is dropped, and its connection closed, with probability
    /// `rate` (0 to 1; zero: never).
    pub fn set_drop_rate(&self, rate: f64) {
        let per_million = (rate.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
        self.shared
            .drop_per_million
            .store(per_million, Ordering::SeqCst);
    }

    /// Closes every open connection now (FIN), whatever is on its way in it: bytes not
    /// yet passed on are lost. New connections go through.
    pub fn drop_connections(&self) {
        self.shared.end_generation(false);
    }

    /// Resets every open connection now (RST to both sides). New connections go through.
    pub fn reset_connections(&self) {
        self.shared.end_generation(true);
    }

    /// From now on nothing gets through, in either direction, on any connection.
    pub fn partition(&self) {
        self.shared.partitioned.store(true, Ordering::SeqCst);
    }

    /// Closes every connection made before now, and forwards again.
    pub fn heal(&self) {
        self.shared.end_generation(false);
        self.shared.partitioned.store(false, Ordering::SeqCst);
    }

    /// The faults injected so far.
    pub fn stats(&self) -> FaultStats {
        let c = &self.shared.counters;
        let get = |n: &AtomicU64| n.load(Ordering::SeqCst);
        FaultStats {
            connections: get(&c.connections),
            delayed_chunks: get(&c.delayed_chunks),
            dropped_chunks: get(&c.dropped_chunks),
            cut_connections: get(&c.cut_connections),
            reset_connections: get(&c.reset_connections),
            blackholed_chunks: get(&c.blackholed_chunks),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.end_generation(false);
    }
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    while !shared.stopped.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                shared.counters.connections.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                std::thread::spawn(move || serve(client, target, &shared));
            }
            Err(_) => std::thread::sleep(CHECK_EVERY),
        }
    }
}

/// How a connection ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ending {
    /// A side closed, or a write failed: closed as it would be without the proxy.
    Closed = 1,
    /// The proxy closed it with a FIN.
    Cut = 2,
    /// The proxy reset it.
    Reset = 3,
}

/// One forwarded connection: the generation it belongs to, and how it ended, once it
/// did (both directions' threads look).
struct Connection {
    generation: u64,
    ending: AtomicU8,
}

impl Connection {
    /// Records how the connection ends, unless it already ended; returns how it did.
    fn end(&self, how: Ending) -> Ending {
        match self
            .ending
            .compare_exchange(0, how as u8, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => how,
            Err(1) => Ending::Closed,
            Err(2) => Ending::Cut,
            Err(_) => Ending::Reset,
        }
    }

    /// How the connection ended, if it must end now.
    fn ending(&self, shared: &Shared) -> Option<Ending> {
        match self.ending.load(Ordering::SeqCst) {
            1 => Some(Ending::Closed),
            2 => Some(Ending::Cut),
            3 => Some(Ending::Reset),
            _ if shared.generation.load(Ordering::SeqCst) != self.generation => {
                let reset = shared
                    .reset_generations
                    .lock()
                    .expect("the proxy's lock")
                    .contains(&self.generation);
                Some(self.end(if reset { Ending::Reset } else { Ending::Cut }))
            }
            _ => None,
        }
    }
}

/// Forwards one connection both ways until it ends, then closes both sides as it ended.
fn serve(client: TcpStream, target: SocketAddr, shared: &Arc<Shared>) {
    let connection = Arc::new(Connection {
        generation: shared.generation.load(Ordering::SeqCst),
        ending: AtomicU8::new(0),
    });
    // A connection opened during a partition never reaches the target.
    while shared.partitioned.load(Ordering::SeqCst) {
        if connection.ending(shared).is_some() {
            return;
        }
        std::thread::sleep(CHECK_EVERY);
    }
    let Ok(upstream) = TcpStream::connect(target) else {
        return;
    };
    let directions = [(&client, &upstream), (&upstream, &client)].map(|(from, to)| {
        let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
            connection.end(Ending::Closed);
            return None;
        };
        let (connection, shared) = (connection.clone(), shared.clone());
        Some(std::thread::spawn(move || {
            forward(from, to, &connection, &shared)
        }))
    });
    for direction in directions.into_iter().flatten() {
        let _ = direction.join();
    }
    let how = connection.end(Ending::Closed);
    let counters = &shared.counters;
    match how {
        Ending::Reset => {
            counters.reset_connections.fetch_add(1, Ordering::SeqCst);
            // With a zero linger, closing the last descriptor sends RST, not FIN.
            for side in [&client, &upstream] {
                let _ = socket2::SockRef::from(side).set_linger(Some(Duration::ZERO));
            }
        }
        Ending::Cut | Ending::Closed => {
            if how == Ending::Cut {
                counters.cut_connections.fetch_add(1, Ordering::SeqCst);
            }
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }
}

/// Reads chunks from `from` and hands them, stamped with when they are due, to a
/// thread that writes them to `to`; a drop ends the connection here.
fn forward(mut from: TcpStream, to: TcpStream, connection: &Arc<Connection>, shared: &Arc<Shared>) {
    let (chunks, due) = mpsc::channel();
    let deliver_connection = connection.clone();
    let deliver_shared = shared.clone();
    let delivering =
        std::thread::spawn(move || deliver(&due, to, &deliver_connection, &deliver_shared));
    let _ = from.set_read_timeout(Some(CHECK_EVERY));
    let mut buf = [0u8; 16 * 1024];
    while connection.ending(shared).is_none() {
        match from.read(&mut buf) {
            // The other side closed: what is on its way is still delivered.
            Ok(0) => break,
            Ok(n) => {
                if shared.partitioned.load(Ordering::SeqCst) {
                    shared
                        .counters
                        .blackholed_chunks
                        .fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                if shared.roll_drop() {
                    shared
                        .counters
                        .dropped_chunks
                        .fetch_add(1, Ordering::SeqCst);
                    connection.end(Ending::Cut);
                    break;
                }
                let delay = Duration::from_millis(shared.delay_ms.load(Ordering::SeqCst));
                if !delay.is_zero() {
                    shared
                        .counters
                        .delayed_chunks
                        .fetch_add(1, Ordering::SeqCst);
                }
                if chunks
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                connection.end(Ending::Closed);
                break;
            }
        }
    }
    drop(chunks);
    let _ = delivering.join();
}

/// Writes each chunk to `to` once it is due, unless the connection ended meanwhile (or
/// a partition swallows it); when the reading side is done and nothing is left, the
/// connection ends.
fn deliver(
    due: &mpsc::Receiver<(Instant, Vec<u8>)>,
    mut to: TcpStream,
    connection: &Connection,
    shared: &Shared,
) {
    loop {
        let (at, chunk) = match due.recv_timeout(CHECK_EVERY) {
            Ok(next) => next,
            Err(RecvTimeoutError::Timeout) => {
                if connection.ending(shared).is_some() {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                connection.end(Ending::Closed);
                return;
            }
        };
        loop {
            if connection.ending(shared).is_some() {
                return;
            }
            let now = Instant::now();
            if now >= at {
                break;
            }
            std::thread::sleep((at - now).min(CHECK_EVERY));
        }
        if shared.partitioned.load(Ordering::SeqCst) {
            shared
                .counters
                .blackholed_chunks
                .fetch_add(1, Ordering::SeqCst);
            continue;
        }
        if to.write_all(&chunk).is_err() {
            connection.end(Ending::Closed);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target that answers every chunk it reads with the same bytes, and counts the
    /// bytes it received.
    struct Echo {
        addr: SocketAddr,
        received: Arc<AtomicU64>,
    }

    impl Echo {
        fn start() -> Echo {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let received = Arc::new(AtomicU64::new(0));
            let counted = received.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { return };
                    let counted = counted.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = stream.read(&mut buf) {
                            if n == 0 {
                                return;
                            }
                            counted.fetch_add(n as u64, Ordering::SeqCst);
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            Echo { addr, received }
        }
    }

    fn connect(proxy: &FaultProxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.addr()).unwrap();
        stream
            .set_read_timeout(Some(crate::wait::DEADLINE))
            .unwrap();
        stream
    }

    /// Sends `message` and reads its echo.
    fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(message)?;
        let mut echo = vec![0u8; message.len()];
        stream.read_exact(&mut echo)?;
        Ok(echo)
    }

    /// What the next read on `stream` gives once the proxy has closed it.
    fn read_after_close(stream: &mut TcpStream) -> std::io::Result<usize> {
        let mut buf = [0u8; 16];
        stream.read(&mut buf)
    }

    #[test]
    fn forwards_bytes_both_ways() {
        let echo = Echo::start();
        let proxy = FaultProxy::start(echo.addr);
        let mut stream = connect(&proxy);
        assert_eq!(round_trip(&mut stream, b"hello").unwrap(), b"hello");
        assert_eq!(round_trip(&mut stream, b"again").unwrap(), b"again");
        assert_eq!(proxy.stats().connections, 1);
    }

    #[test]
    fn a_delay_holds_each_chunk_back_both_ways() {
        let echo = Echo::start();
        let proxy = FaultProxy::start(echo.addr);
        let mut stream = connect(&proxy);
        proxy.set_delay(Duration::from_millis(200));
        let sent = Instant::now();
        assert_eq!(round_trip(&mut stream, b"slow").unwrap(), b"slow");
        // Once on the way there, once on the way back.
        assert!(sent.elapsed() >= Duration::from_millis(400), "{sent:?}");
        assert_eq!(proxy.stats().delayed_chunks, 2);

        proxy.set_delay(Duration::ZERO);
        assert_eq!(round_trip(&mut stream, b"fast").unwrap(), b"fast");
        assert_eq!(proxy.stats().delayed_chunks, 2, "no delay once cleared");
    }

    #[test]
    fn a_dropped_chunk_never_arrives_and_its_connection_closes() {
        let echo = Echo::start();
        let proxy = FaultProxy::start(echo.addr);
        proxy.set_drop_rate(1.0);
        let mut stream = connect(&proxy);
        stream.write_all(b"lost").unwrap();
        // Closed with a FIN: end of stream, not an error.
        assert_eq!(read_after_close(&mut stream).unwrap(), 0);
        assert_eq!(echo.received.load(Ordering::SeqCst), 0, "nothing arrived");
        let stats = proxy.stats();
        assert_eq!((stats.dropped_chunks, stats.cut_connections), (1, 1));

        proxy.set_drop_rate(0.0);
        let mut stream = connect(&proxy);
        assert_eq!(round_trip(&mut stream, b"kept").unwrap(), b"kept");
    }

    #[test]
    fn a_drop_rate_drops_about_that_share_of_chunks() {
        let echo = Echo::start();
        let proxy = FaultProxy::start(echo.addr);
        proxy.seed(7);
        proxy.set_drop_rate(0.5);
        let mut delivered = 0;
        for _ in 0..200 {
            let mut stream = connect(&proxy);
            if round_trip(&mut stream, b"x").is_ok_and(|echo| echo == b"x") {
                delivered += 1;
            }
        }
        // Each round trip passes two chunks, each dropped with probability 1/2: about
        // 50 of 200 go through; the bounds are far out (the generator is seeded).
        assert!(
            (20..=90).contains(&delivered),
            "{delivered} of 200 went through"
        );
    }

    #[test]
    fn dropping_connections_closes_open_ones_and_lets_new_ones_through() {
        let echo = Echo::start();
        let proxy = FaultProxy::start(echo.addr);
        let mut stream = connect(&proxy);
        assert_eq!(round_trip(&mut stream, b"one").unwrap(), b"one");
        proxy.drop_connections();
        assert_eq!(read_after_close(&mut stream).unwrap(), 0);
        assert_eq!(proxy.stats().cut_connections, 1);
        let mut stream = connect(&proxy);
        assert_eq!(round_trip(&mut stream, b"two").unwrap(), b"two");
    }

    #[test]
    fn a_reset_reaches_the_client_as_a_reset() {
        let echo = Echo::start();
        let proxy = FaultProxy::start(echo.addr);
        let mut stream = connect(&proxy);
        assert_eq!(round_trip(&mut stream, b"one").unwrap(), b"one");
        proxy.reset_connections();
        let error = read_after_close(&mut stream).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}");
        assert_eq!(proxy.stats().reset_connections, 1);
        let mut stream = connect(&proxy);
        assert_eq!(round_trip(&mut stream, b"two").unwrap(), b"two");
    }

    #[test]
    fn a_partition_swallows_everything_until_it_heals() {
        let echo = Echo::start();
        let proxy = FaultProxy::start(echo.addr);
        let mut stream = connect(&proxy);
        assert_eq!(round_trip(&mut stream, b"one").unwrap(), b"one");
        proxy.partition();
        stream.write_all(b"into the void").unwrap();
        crate::wait::eventually("the partition to swallow the chunk", || {
            (proxy.stats().blackholed_chunks == 1).then_some(())
        });
        // A connection opened during the partition is accepted, and held.
        let mut during = connect(&proxy);
        during.write_all(b"held").unwrap();
        crate::wait::eventually("the proxy to accept the connection", || {
            (proxy.stats().connections == 2).then_some(())
        });
        assert_eq!(echo.received.load(Ordering::SeqCst), 3, "only the first");

        proxy.heal();
        assert_eq!(
            read_after_close(&mut stream).unwrap(),
            0,
            "closed by the heal"
        );
        // Closed too; with its bytes unread, the close is a reset.
        let closed = read_after_close(&mut during);
        assert!(
            matches!(&closed, Ok(0))
                || closed
                    .as_ref()
                    .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
            "closed by the heal: {closed:?}"
        );
        let mut after = connect(&proxy);
        assert_eq!(round_trip(&mut after, b"two").unwrap(), b"two");
    }
}
