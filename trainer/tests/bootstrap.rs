//! The data-parallel bootstrap over real sockets on the loopback: ranks as
//! threads, and as processes (this test executable run again as one rank,
//! `rank_process`) where a process's death is what is tested, or a real
//! NCCL id is handed out (no GPU needed).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use trainer::bootstrap::{Timeouts, Watch, connect_nccl, exchange_id};
use trainer::distributed::{World, world_from_env};

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn world(rank: usize, size: usize, port: u16) -> World {
    World {
        rank,
        size,
        local_rank: rank,
        master: Some(("127.0.0.1".into(), port)),
    }
}

/// The id rank 0 hands out when the test does not need NCCL's.
fn made_up_id() -> Vec<u8> {
    (0..128u32).map(|i| (i * 37 % 251) as u8).collect()
}

type Joined = trainer::Result<(Vec<u8>, Watch)>;

/// Ranks `ranks` of a job of `size` as threads, rank 0 (if among them)
/// starting `rank0_delay` after the others; their outcomes, in `ranks`' order.
fn on_threads(
    size: usize,
    ranks: &[usize],
    port: u16,
    timeout: Duration,
    rank0_delay: Duration,
) -> Vec<Joined> {
    std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .iter()
            .map(|&rank| {
                s.spawn(move || {
                    if rank == 0 {
                        std::thread::sleep(rank0_delay);
                        exchange_id(&world(0, size, port), || Ok(made_up_id()), timeout)
                    } else {
                        let never = || panic!("only rank 0 makes the id");
                        exchange_id(&world(rank, size, port), never, timeout)
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn error_of(joined: &Joined) -> String {
    match joined {
        Ok(_) => panic!("the bootstrap succeeded"),
        Err(e) => e.to_string(),
    }
}

/// Polls `watch`'s alarm for up to `within`.
fn alarm_within(watch: &Watch, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(why) = watch.alarm().raised() {
            return Some(why);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn four_ranks_receive_rank_zeros_id_even_when_rank_zero_starts_last() {
    let port = free_port();
    let joined = on_threads(
        4,
        &[1, 2, 3, 0],
        port,
        Duration::from_secs(30),
        Duration::from_millis(400),
    );
    for j in &joined {
        let (id, watch) = j.as_ref().expect("every rank joins");
        assert_eq!(*id, made_up_id());
        assert_eq!(watch.alarm().raised(), None);
    }
}

#[test]
fn a_rank_that_never_connects_is_named_to_every_rank_in_bounded_time() {
    let port = free_port();
    let start = Instant::now();
    let joined = on_threads(3, &[0, 1], port, Duration::from_secs(1), Duration::ZERO);
    let elapsed = start.elapsed();
    for j in &joined {
        let err = error_of(j);
        assert!(
            err.contains("rank(s) [2] of 3 did not connect to rank 0 at 127.0.0.1:")
                && err.contains("within 1s"),
            "{err}"
        );
    }
    assert!(
        error_of(&joined[1]).contains("rank 1: refused by rank 0"),
        "rank 1 reports rank 0's reason"
    );
    assert!(elapsed < Duration::from_secs(6), "took {elapsed:?}");
}

#[test]
fn without_rank_zero_a_rank_gives_up_naming_the_address() {
    let port = free_port();
    let start = Instant::now();
    let joined = on_threads(2, &[1], port, Duration::from_secs(1), Duration::ZERO);
    let err = error_of(&joined[0]);
    assert!(
        err.contains(&format!(
            "rank 1 could not reach rank 0 at 127.0.0.1:{port} within 1s"
        )),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(4));
}

#[test]
fn processes_of_another_job_are_refused_and_rank_zero_carries_on() {
    let port = free_port();
    let timeout = Duration::from_secs(20);
    std::thread::scope(|s| {
        let rank0 = s.spawn(|| exchange_id(&world(0, 2, port), || Ok(made_up_id()), timeout));
        // Another program: refused, and rank 0 keeps listening.
        let mut stranger = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(c) => break c,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stranger
            .write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        // A rank of a job of another size: refused with the reason.
        let other = exchange_id(&world(1, 3, port), || unreachable!(), timeout);
        let err = error_of(&other);
        assert!(
            err.contains("refused by rank 0")
                && err.contains("rank 0 runs a job of 2 processes, rank 1 one of 3"),
            "{err}"
        );
        // The job's own rank 1 still joins.
        let (id, _watch) = exchange_id(&world(1, 2, port), || unreachable!(), timeout).unwrap();
        assert_eq!(id, made_up_id());
        assert_eq!(rank0.join().unwrap().unwrap().0, made_up_id());
    });
}

#[test]
fn rank_zero_names_what_it_refused_when_a_rank_is_missing() {
    let port = free_port();
    let timeout = Duration::from_secs(1);
    std::thread::scope(|s| {
        let rank0 = s.spawn(|| exchange_id(&world(0, 2, port), || Ok(made_up_id()), timeout));
        std::thread::sleep(Duration::from_millis(100));
        let _ = exchange_id(&world(1, 3, port), || unreachable!(), timeout);
        let err = error_of(&rank0.join().unwrap());
        assert!(
            err.contains("rank(s) [1] of 2 did not connect")
                && err.contains("refused: rank 0 runs a job of 2 processes, rank 1 one of 3"),
            "{err}"
        );
    });
}

#[test]
fn a_rank_leaving_after_the_bootstrap_is_named_to_the_others() {
    let port = free_port();
    let mut joined: Vec<Watch> =
        on_threads(3, &[0, 1, 2], port, Duration::from_secs(30), Duration::ZERO)
            .into_iter()
            .map(|j| j.unwrap().1)
            .collect();
    // Rank 2 closes its connection (as its process's end would).
    drop(joined.pop());
    let within = Duration::from_secs(5);
    for watch in &joined {
        let why = alarm_within(watch, within).expect("the alarm is raised");
        assert!(why.contains("rank 2 ended"), "{why}");
    }
    // Rank 0 leaving: rank 1 learns it from its own connection.
    let rank1 = joined.pop().unwrap();
    let fresh = free_port();
    let mut pair: Vec<Watch> =
        on_threads(2, &[0, 1], fresh, Duration::from_secs(30), Duration::ZERO)
            .into_iter()
            .map(|j| j.unwrap().1)
            .collect();
    let rank1_of_pair = pair.pop().unwrap();
    drop(pair);
    let why = alarm_within(&rank1_of_pair, within).expect("the alarm is raised");
    assert!(
        why.contains(&format!("rank 0 (at 127.0.0.1:{fresh}) ended")),
        "{why}"
    );
    drop(rank1);
}

/// The library path a rank process finds NCCL with, `None` without NCCL.
/// This executable does not re-execute itself as the trainer does: its rank
/// processes get the path the trainer would run with.
fn nccl_library_path() -> Option<String> {
    let group = kernels::probe::GROUPS.iter().find(|g| g.name == "nccl")?;
    kernels::probe::choose_folder(&kernels::probe::search_dirs(), group)?;
    Some(
        kernels::probe::library_path()
            .unwrap_or_else(|| std::env::var("LD_LIBRARY_PATH").unwrap_or_default()),
    )
}

/// Marks the lines a rank process prints for the test that started it.
const TAG: &str = "rank-process:";

/// One rank of a job whose place is in the environment (torchrun's
/// variables): joins, prints the id, then waits (at most 30 s) for the
/// watch's alarm and prints it. `M2T_TEST_NCCL_ID` makes rank 0 hand out a
/// real NCCL id; `M2T_TEST_CONNECT` runs the whole `connect_nccl` on
/// `cuda:0` instead and prints its error.
#[test]
#[ignore = "one rank of a job, run as a process by the other tests"]
fn rank_process() {
    let world = world_from_env(|k| std::env::var(k).ok())
        .unwrap()
        .expect("RANK and WORLD_SIZE are set");
    if std::env::var_os("M2T_TEST_CONNECT").is_some() {
        let timeouts = Timeouts {
            bootstrap: Duration::from_secs(20),
            collective: Duration::from_secs(20),
        };
        match connect_nccl(&world, engine::Device::Cuda(0), timeouts) {
            Ok(_) => println!("{TAG} connected"),
            Err(e) => println!("{TAG} failed {e}"),
        }
        return;
    }
    let nccl = std::env::var_os("M2T_TEST_NCCL_ID").is_some();
    let make_id = || {
        if nccl {
            Ok(engine::comm::nccl::unique_id()?)
        } else {
            Ok(made_up_id())
        }
    };
    let (id, watch) = match exchange_id(&world, make_id, Duration::from_secs(30)) {
        Ok(joined) => joined,
        Err(e) => {
            println!("{TAG} failed {e}");
            return;
        }
    };
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    println!("{TAG} joined {hex}");
    std::io::stdout().flush().unwrap();
    match alarm_within(&watch, Duration::from_secs(30)) {
        Some(why) => println!("{TAG} alarm {why}"),
        None => println!("{TAG} no alarm"),
    }
}

/// A job of `size` rank processes; killed when dropped.
struct Job {
    ranks: Vec<Child>,
    lines: mpsc::Receiver<(usize, String)>,
}

impl Job {
    fn start(size: usize, env: &[(&str, &str)]) -> Job {
        Job::start_ranks(size, &(0..size).collect::<Vec<_>>(), env)
    }

    /// Only ranks `ranks` of the job; `ranks[i]` is `self.ranks[i]`.
    fn start_ranks(size: usize, ranks: &[usize], env: &[(&str, &str)]) -> Job {
        let port = free_port().to_string();
        let (tx, lines) = mpsc::channel();
        let ranks = ranks
            .iter()
            .map(|&rank| {
                let mut child = Command::new(std::env::current_exe().unwrap())
                    .args(["rank_process", "--exact", "--ignored", "--nocapture"])
                    .env("RANK", rank.to_string())
                    .env("WORLD_SIZE", size.to_string())
                    .env("MASTER_ADDR", "127.0.0.1")
                    .env("MASTER_PORT", &port)
                    .envs(env.iter().copied())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let out = BufReader::new(child.stdout.take().unwrap());
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in out.lines().map_while(Result::ok) {
                        if let Some(said) = line.strip_prefix(TAG) {
                            let _ = tx.send((rank, said.trim().to_string()));
                        }
                    }
                });
                child
            })
            .collect();
        Job { ranks, lines }
    }

    /// What each of `ranks` says next, waiting at most `within` in all.
    fn next_of(&self, ranks: &[usize], within: Duration) -> HashMap<usize, String> {
        let deadline = Instant::now() + within;
        let mut said = HashMap::new();
        while said.len() < ranks.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((rank, line)) if ranks.contains(&rank) => {
                    said.entry(rank).or_insert(line);
                }
                Ok(_) => {}
                Err(_) => panic!("ranks {ranks:?} said only {said:?} within {within:?}"),
            }
        }
        said
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        for child in &mut self.ranks {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Kills rank `dead` of a 3-rank job once all joined; what the others' alarms say.
fn kill_and_listen(dead: usize) -> HashMap<usize, String> {
    let mut job = Job::start(3, &[]);
    let joined = job.next_of(&[0, 1, 2], Duration::from_secs(60));
    for (rank, said) in &joined {
        assert!(said.starts_with("joined "), "rank {rank}: {said}");
    }
    job.ranks[dead].kill().unwrap();
    job.ranks[dead].wait().unwrap();
    let others: Vec<usize> = (0..3).filter(|&r| r != dead).collect();
    job.next_of(&others, Duration::from_secs(20))
}

#[test]
fn a_killed_rank_process_is_named_to_every_other_rank() {
    for (rank, said) in kill_and_listen(1) {
        assert!(
            said.starts_with("alarm rank 1 ended or lost its connection"),
            "rank {rank}: {said}"
        );
    }
}

#[test]
fn a_killed_rank_zero_process_is_named_to_every_other_rank() {
    for (rank, said) in kill_and_listen(0) {
        assert!(
            said.starts_with("alarm rank 0 (at 127.0.0.1:") && said.contains(") ended"),
            "rank {rank}: {said}"
        );
    }
}

#[test]
fn rank_processes_receive_a_real_nccl_id() {
    let Some(path) = nccl_library_path() else {
        eprintln!("skipped: no NCCL (scripts/install-nccl.sh installs it into .deps)");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs NCCL into .deps"
        );
        return;
    };
    let job = Job::start(
        4,
        &[
            ("M2T_TEST_NCCL_ID", "1"),
            ("LD_LIBRARY_PATH", path.as_str()),
        ],
    );
    let said = job.next_of(&[0, 1, 2, 3], Duration::from_secs(60));
    let ids: Vec<&str> = (0..4)
        .map(|r| {
            said[&r]
                .strip_prefix("joined ")
                .unwrap_or_else(|| panic!("rank {r}: {}", said[&r]))
        })
        .collect();
    assert_eq!(ids[0].len(), 2 * 128, "an NCCL id has 128 bytes");
    assert!(ids[0].chars().any(|c| c != '0'), "the id is not blank");
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
}

/// A folder whose `libnccl.so` (the name cudarc opens) cannot load.
fn broken_nccl_folder() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bootstrap-{}-no-nccl", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("libnccl.so"), b"").unwrap();
    dir
}

#[test]
fn without_nccl_a_rank_fails_at_once_before_any_networking() {
    let dir = broken_nccl_folder();
    // Rank 1 alone: with NCCL it would wait 20 s for rank 0.
    let job = Job::start_ranks(
        2,
        &[1],
        &[
            ("M2T_TEST_CONNECT", "1"),
            ("LD_LIBRARY_PATH", dir.to_str().unwrap()),
        ],
    );
    let said = job.next_of(&[1], Duration::from_secs(10));
    assert!(
        said[&1].starts_with("failed") && said[&1].contains("NCCL not found"),
        "{said:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn with_nccl_and_no_gpu_both_ranks_get_through_the_bootstrap_to_the_device() {
    let Some(path) = nccl_library_path() else {
        eprintln!("skipped: no NCCL (scripts/install-nccl.sh installs it into .deps)");
        return;
    };
    if kernels::probe::probe().usable().is_ok() {
        eprintln!("skipped: this machine has a GPU (tests/tests/nccl.rs runs NCCL on it)");
        return;
    }
    let job = Job::start(
        2,
        &[
            ("M2T_TEST_CONNECT", "1"),
            ("LD_LIBRARY_PATH", path.as_str()),
        ],
    );
    for (rank, said) in job.next_of(&[0, 1], Duration::from_secs(30)) {
        assert!(
            said.starts_with("failed") && said.contains("CUDA driver"),
            "rank {rank}: {said}"
        );
    }
}
