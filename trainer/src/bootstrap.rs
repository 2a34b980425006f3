//! The start of a data-parallel job: rank 0 hands every other rank the NCCL
//! unique id over TCP, and the connections then stay open as a watch over
//! the ranks' processes. This is all the networking the project writes; the
//! collectives themselves run on NCCL ([`connect_nccl`]).
//!
//! Rank 0 listens on `MASTER_ADDR:MASTER_PORT`. Every other rank connects,
//! retrying until the timeout (rank 0 may start last), and says who it is:
//! a magic, the protocol version, its job's world size and its rank. Rank 0
//! refuses a connection that is not of its job — another program, another
//! protocol version or world size, a rank out of range or already connected
//! — with a one-line reason that the refused process reports. Once every
//! rank is connected it sends each the id; ranks that did not connect in
//! time are named to every rank that did.
//!
//! The id is bytes: the exchange is tested on the CPU with any id, and with
//! a real NCCL id between processes.
//!
//! After the exchange the connections stay open. When a rank's process
//! ends, its connection closes: rank 0 learns it, raises its [`Alarm`] and
//! tells every other rank which rank ended; when rank 0's process ends, the
//! others see their connection close. The communicators watch the alarm, so
//! one rank's end stops every rank's collectives with a message naming it
//! instead of a hang.

use crate::distributed::World;
use crate::{Error, Result};
use engine::Device;
use engine::comm::nccl::NcclComm;
use engine::comm::{Alarm, Communicator};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long ranks wait for each other to start, by default.
pub const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(300);

/// What a rank sends first: who speaks, and in which version.
const MAGIC: [u8; 8] = *b"M2T-BOOT";
const VERSION: u32 = 1;

/// Rank 0's messages: a tag, then a length-prefixed payload.
/// The id, once every rank has connected.
const ID: u8 = 1;
/// Why this connection or the whole job was refused (UTF-8).
const REFUSED: u8 = 2;
/// After the exchange: which rank ended, and how (UTF-8).
const ENDED: u8 = 3;

/// The longest payload accepted: an id or a sentence.
const MAX_PAYLOAD: u32 = 1 << 16;

/// How long a connected rank waits past its own timeout for rank 0's
/// answer, so that rank 0's reason (which ranks are missing) arrives first.
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// How long rank 0 waits for a connected process to say who it is.
const GREETING_TIMEOUT: Duration = Duration::from_secs(5);

fn fail(why: String) -> Error {
    Error::Engine(engine::Error::Comm(why))
}

/// The timeouts of a data-parallel job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// How long ranks wait for each other to start ([`BOOTSTRAP_TIMEOUT`]).
    pub bootstrap: Duration,
    /// How long a rank waits in NCCL's set-up or a collective for the
    /// others ([`COLLECTIVE_TIMEOUT`]).
    pub collective: Duration,
}

/// How long a rank waits in a collective, by default: 30 minutes, PyTorch's
/// former default, not NCCL's 10 in PyTorch today, because the other ranks
/// wait in the next step's all-reduce while rank 0 alone runs the kNN
/// monitor, which takes minutes on ImageNet. A rank whose process ends is
/// noticed at once by the watch, whatever the timeout.
pub const COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            bootstrap: BOOTSTRAP_TIMEOUT,
            collective: COLLECTIVE_TIMEOUT,
        }
    }
}

/// This process's NCCL communicator in `world`, on CUDA device `device`:
/// checks NCCL (a missing one fails here, before any networking), runs the
/// bootstrap (rank 0 creates the id), then joins NCCL's communicator. It
/// keeps the bootstrap's connections as its watch: one rank's end stops
/// every rank's collectives with an error naming that rank.
pub fn connect_nccl(
    world: &World,
    device: Device,
    timeouts: Timeouts,
) -> Result<Box<dyn Communicator>> {
    engine::comm::nccl::version()?;
    let (id, watch) = exchange_id(
        world,
        || Ok(engine::comm::nccl::unique_id()?),
        timeouts.bootstrap,
    )?;
    let nccl = NcclComm::new(
        device,
        &id,
        (world.rank, world.size),
        timeouts.collective,
        watch.alarm(),
    )?;
    Ok(Box::new(Watched {
        nccl,
        _watch: watch,
    }))
}

/// An NCCL communicator with the bootstrap's connections, which close when
/// it is dropped (after NCCL's abort, fields dropping in order).
struct Watched {
    nccl: NcclComm,
    _watch: Watch,
}

impl Communicator for Watched {
    fn rank(&self) -> usize {
        self.nccl.rank()
    }

    fn world_size(&self) -> usize {
        self.nccl.world_size()
    }

    fn all_reduce_mean_host(&mut self, data: &mut [f32]) -> Result<(), engine::Error> {
        self.nccl.all_reduce_mean_host(data)
    }

    fn all_reduce_mean(&mut self, buf: &mut engine::Tensor) -> Result<(), engine::Error> {
        self.nccl.all_reduce_mean(buf)
    }

    fn start_mean(
        &mut self,
        buf: &mut engine::Tensor,
        range: std::ops::Range<usize>,
    ) -> Result<(), engine::Error> {
        self.nccl.start_mean(buf, range)
    }

    fn wait(&mut self) -> Result<(), engine::Error> {
        self.nccl.wait()
    }
}

/// Runs the bootstrap of this process's place in `world`: rank 0 calls
/// `make_id` and hands the id to every other rank; each returns the id and
/// the [`Watch`] over the others. Fails with a message naming the ranks or
/// address at fault when ranks do not all connect within `timeout`, or a
/// rank is refused. A job of one process just makes its id.
pub fn exchange_id(
    world: &World,
    make_id: impl FnOnce() -> Result<Vec<u8>>,
    timeout: Duration,
) -> Result<(Vec<u8>, Watch)> {
    if world.size == 1 {
        return Ok((make_id()?, Watch::new(Vec::new(), None)));
    }
    let Some((host, port)) = &world.master else {
        return Err(Error::Usage(format!(
            "a job of {} processes needs MASTER_ADDR and MASTER_PORT (rank 0's host and a free port)",
            world.size
        )));
    };
    let master = format!("{host}:{port}");
    if world.rank == 0 {
        serve(&master, world.size, make_id, timeout)
    } else {
        join(&master, (world.rank, world.size), timeout)
    }
}

/// Writes one of rank 0's messages.
fn send(stream: &mut impl Write, tag: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = vec![tag];
    frame.extend((payload.len() as u32).to_le_bytes());
    frame.extend(payload);
    stream.write_all(&frame)
}

/// Reads one of rank 0's messages: its tag and payload.
fn receive(stream: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head)?;
    let len = u32::from_le_bytes(head[1..].try_into().unwrap());
    if len > MAX_PAYLOAD {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("a message of {len} bytes"),
        ));
    }
    let mut payload = vec![0; len as usize];
    stream.read_exact(&mut payload)?;
    Ok((head[0], payload))
}

/// What a rank sends on connecting.
fn greeting(rank: usize, world: usize) -> Vec<u8> {
    let mut hello = MAGIC.to_vec();
    for n in [VERSION, world as u32, rank as u32] {
        hello.extend(n.to_le_bytes());
    }
    hello
}

/// The rank a connected process says it is, or why it is refused.
fn check_greeting(
    hello: &[u8; 20],
    world: usize,
    connected: &[Option<TcpStream>],
) -> std::result::Result<usize, String> {
    let word = |i: usize| u32::from_le_bytes(hello[8 + 4 * i..12 + 4 * i].try_into().unwrap());
    let (version, their_world, rank) = (word(0), word(1) as usize, word(2) as usize);
    if hello[..8] != MAGIC {
        return Err("not a trainer's bootstrap (another program on this port?)".into());
    }
    if version != VERSION {
        return Err(format!(
            "rank 0 speaks bootstrap version {VERSION}, rank {rank} version {version} (trainers of different versions)"
        ));
    }
    if their_world != world {
        return Err(format!(
            "rank 0 runs a job of {world} processes, rank {rank} one of {their_world} (WORLD_SIZE or SLURM_NTASKS differ between the processes)"
        ));
    }
    if rank == 0 || rank >= world {
        return Err(format!(
            "rank {rank} is not one of ranks 1..{world} (RANK or SLURM_PROCID is wrong)"
        ));
    }
    if connected[rank].is_some() {
        return Err(format!(
            "rank {rank} is already connected (two processes with the same RANK?)"
        ));
    }
    Ok(rank)
}

/// Reads a connected process's greeting; refuses it (telling it why) or
/// returns its rank.
fn greet(
    mut stream: TcpStream,
    world: usize,
    connected: &[Option<TcpStream>],
) -> std::result::Result<(usize, TcpStream), String> {
    let mut hello = [0u8; 20];
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(GREETING_TIMEOUT)))
        .and_then(|()| stream.read_exact(&mut hello))
        .map_err(|e| format!("no greeting ({e})"))?;
    match check_greeting(&hello, world, connected) {
        Ok(rank) => Ok((rank, stream)),
        Err(why) => {
            let _ = send(&mut stream, REFUSED, why.as_bytes());
            Err(why)
        }
    }
}

/// Rank 0's side: listens on `master`, collects every other rank, hands
/// out the id.
fn serve(
    master: &str,
    world: usize,
    make_id: impl FnOnce() -> Result<Vec<u8>>,
    timeout: Duration,
) -> Result<(Vec<u8>, Watch)> {
    let listener = TcpListener::bind(master)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| {
            fail(format!(
                "rank 0 cannot listen on {master} ({e}): MASTER_ADDR must name rank 0's machine and MASTER_PORT a free port"
            ))
        })?;
    let id = make_id()?;
    let deadline = Instant::now() + timeout;
    let mut connected: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
    let mut refused: Vec<String> = Vec::new();
    while connected[1..].iter().any(Option::is_none) {
        if Instant::now() >= deadline {
            let missing: Vec<usize> = (1..world).filter(|&r| connected[r].is_none()).collect();
            let mut why = format!(
                "rank(s) {missing:?} of {world} did not connect to rank 0 at {master} within {timeout:.0?}"
            );
            if !refused.is_empty() {
                why += &format!("; {}", refused.join("; "));
            }
            for stream in connected.iter_mut().flatten() {
                let _ = send(stream, REFUSED, why.as_bytes());
            }
            return Err(fail(why));
        }
        match listener.accept() {
            Ok((stream, from)) => match greet(stream, world, &connected) {
                Ok((rank, stream)) => connected[rank] = Some(stream),
                Err(why) => refused.push(format!("{from} refused: {why}")),
            },
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(fail(format!("rank 0 at {master}: accept failed: {e}"))),
        }
    }
    let mut streams: Vec<(usize, TcpStream)> = Vec::new();
    for (rank, stream) in connected.into_iter().enumerate() {
        if let Some(mut stream) = stream {
            // A rank gone meanwhile is named by the watch from here on.
            let _ = send(&mut stream, ID, &id);
            let _ = stream.set_read_timeout(None);
            streams.push((rank, stream));
        }
    }
    Ok((id, Watch::new(streams, None)))
}

/// Connects to `master`, retrying until `deadline`.
fn connect(master: &str, deadline: Instant) -> std::io::Result<TcpStream> {
    let mut pause = Duration::from_millis(50);
    loop {
        let attempt = master.to_socket_addrs().and_then(|addrs| {
            let mut last = std::io::Error::new(ErrorKind::NotFound, "no address");
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        });
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() + pause >= deadline => return Err(e),
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// A rank's side: connects to rank 0, says who it is, waits for the id.
fn join(
    master: &str,
    (rank, world): (usize, usize),
    timeout: Duration,
) -> Result<(Vec<u8>, Watch)> {
    let mut stream = connect(master, Instant::now() + timeout).map_err(|e| {
        fail(format!(
            "rank {rank} could not reach rank 0 at {master} within {timeout:.0?} ({e}): is rank 0 running, with the same MASTER_ADDR and MASTER_PORT?"
        ))
    })?;
    let lost = |e: std::io::Error| {
        fail(match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
                "rank {rank}: rank 0 at {master} did not hand out the id within {timeout:.0?}"
            ),
            _ => format!("rank {rank}: rank 0 at {master} closed the bootstrap ({e})"),
        })
    };
    stream
        .write_all(&greeting(rank, world))
        .and_then(|()| stream.set_read_timeout(Some(timeout.saturating_add(ANSWER_GRACE))))
        .map_err(lost)?;
    let (tag, payload) = receive(&mut stream).map_err(lost)?;
    let text = String::from_utf8_lossy(&payload);
    match tag {
        ID => {
            stream.set_read_timeout(None).map_err(lost)?;
            let watch = Watch::new(vec![(0, stream)], Some(master.to_string()));
            Ok((payload, watch))
        }
        REFUSED => Err(fail(format!(
            "rank {rank}: refused by rank 0 at {master}: {text}"
        ))),
        _ => Err(fail(format!(
            "rank {rank}: rank 0 at {master} sent message {tag}, not an id"
        ))),
    }
}

/// The connections of a finished bootstrap, watched: a closed connection
/// (its process ended) or rank 0's word that a rank ended raises the
/// [`Alarm`]. Dropping it closes them, which the other ranks then see.
pub struct Watch {
    alarm: Alarm,
    /// Each peer's rank and connection: every other rank on rank 0, rank 0
    /// elsewhere.
    peers: Vec<(usize, Arc<Mutex<TcpStream>>)>,
    /// Set while this side closes the connections itself.
    closing: Arc<AtomicBool>,
    readers: Vec<JoinHandle<()>>,
}

impl Watch {
    /// Watches `streams` (rank, connection); `master` is rank 0's address
    /// on the other ranks, `None` on rank 0.
    fn new(streams: Vec<(usize, TcpStream)>, master: Option<String>) -> Watch {
        let alarm = Alarm::default();
        let closing = Arc::new(AtomicBool::new(false));
        let mut peers = Vec::new();
        let mut readers = Vec::new();
        for (rank, stream) in &streams {
            let Ok(writer) = stream.try_clone() else {
                alarm.raise(format!("rank {rank}'s connection cannot be watched"));
                continue;
            };
            peers.push((*rank, Arc::new(Mutex::new(writer))));
        }
        for (rank, mut stream) in streams {
            let (alarm, closing) = (alarm.clone(), closing.clone());
            let others: Vec<_> = peers
                .iter()
                .filter(|(r, _)| *r != rank)
                .map(|(_, s)| s.clone())
                .collect();
            let ended = match &master {
                Some(addr) => format!("rank 0 (at {addr}) ended or lost its connection"),
                None => format!("rank {rank} ended or lost its connection to rank 0"),
            };
            readers.push(std::thread::spawn(move || {
                let why = loop {
                    match receive(&mut stream) {
                        Ok((ENDED, why)) => break String::from_utf8_lossy(&why).into_owned(),
                        Ok(_) => continue,
                        Err(_) => break ended,
                    }
                };
                if closing.load(Ordering::SeqCst) {
                    return;
                }
                alarm.raise(why.clone());
                // Rank 0 passes the news on to the ranks still connected.
                for other in &others {
                    let mut other = other.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = send(&mut *other, ENDED, why.as_bytes());
                }
            }));
        }
        Watch {
            alarm,
            peers,
            closing,
            readers,
        }
    }

    /// The alarm this watch raises, for a communicator to wait on.
    pub fn alarm(&self) -> Alarm {
        self.alarm.clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        for (_, peer) in &self.peers {
            let peer = peer.lock().unwrap_or_else(|p| p.into_inner());
            let _ = peer.shutdown(Shutdown::Both);
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(rank: usize, world: usize) -> [u8; 20] {
        greeting(rank, world).try_into().unwrap()
    }

    #[test]
    fn greetings_of_another_job_are_refused_with_the_reason() {
        let none: Vec<Option<TcpStream>> = (0..4).map(|_| None).collect();
        assert_eq!(check_greeting(&hello(3, 4), 4, &none), Ok(3));
        let why = check_greeting(&hello(1, 2), 4, &none).unwrap_err();
        assert!(
            why.contains("a job of 4 processes, rank 1 one of 2"),
            "{why}"
        );
        for rank in [0, 4] {
            let why = check_greeting(&hello(rank, 4), 4, &none).unwrap_err();
            assert!(why.contains("not one of ranks 1..4"), "{why}");
        }
        let mut other = hello(1, 4);
        other[..8].copy_from_slice(b"GET / HT");
        assert!(
            check_greeting(&other, 4, &none)
                .unwrap_err()
                .contains("not a trainer's")
        );
        let mut newer = hello(1, 4);
        newer[8..12].copy_from_slice(&2u32.to_le_bytes());
        let why = check_greeting(&newer, 4, &none).unwrap_err();
        assert!(why.contains("rank 1 version 2"), "{why}");
    }

    #[test]
    fn messages_round_trip_and_oversized_ones_are_refused() {
        let mut wire = Vec::new();
        send(&mut wire, ID, &[7; 128]).unwrap();
        send(&mut wire, ENDED, b"rank 2 ended").unwrap();
        let mut r = &wire[..];
        assert_eq!(receive(&mut r).unwrap(), (ID, vec![7; 128]));
        assert_eq!(receive(&mut r).unwrap(), (ENDED, b"rank 2 ended".to_vec()));
        assert_eq!(
            receive(&mut r).unwrap_err().kind(),
            ErrorKind::UnexpectedEof
        );
        let mut huge = vec![ID];
        huge.extend((MAX_PAYLOAD + 1).to_le_bytes());
        assert_eq!(
            receive(&mut &huge[..]).unwrap_err().kind(),
            ErrorKind::InvalidData
        );
    }
}
