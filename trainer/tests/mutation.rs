//! Malformed inputs at volume: 10,000 mutations of valid seeds per reader
//! (bit flips, truncations, huge and negative sizes, spliced headers,
//! inserted and deleted runs), from a fixed seed. Each reader must answer
//! with an error or a valid result: no panic, no hang (no input may take
//! more than a few seconds), and no allocation beyond what the input
//! justifies (a counting allocator records the largest one).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use trainer::mutation::{Mutator, Reader};

/// The system allocator, recording the largest single allocation.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const INPUTS: usize = 10_000;

/// The largest allocation any input may cause: the readers hold whole
/// files (at most a few hundred KB here) and their decoded images; an
/// image decoder may allocate for the size its header claims, so headers
/// are capped well below this.
const ALLOCATION_LIMIT: usize = 64 << 20;

fn fuzz(reader: Reader, seed: u64) {
    let scratch = std::env::temp_dir().join(format!(
        "trainer-mutation-{}-{reader:?}",
        std::process::id()
    ));
    let seeds = reader.seeds();
    for s in &seeds {
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        assert_eq!(
            reader.read(s, &scratch),
            Ok(()),
            "{reader:?}: a seed is refused"
        );
    }
    let mut mutator = Mutator::new(seed);
    let (mut accepted, mut slowest) = (0, Duration::ZERO);
    for i in 0..INPUTS {
        let input = mutator.mutate(&seeds);
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        LARGEST.store(0, Ordering::Relaxed);
        let start = Instant::now();
        let outcome = std::panic::catch_unwind(|| reader.read(&input, &scratch));
        let took = start.elapsed();
        let largest = LARGEST.load(Ordering::Relaxed);
        let case = || {
            let path = scratch.with_extension("crash");
            std::fs::write(&path, &input).unwrap();
            format!(
                "{reader:?} input {i} of seed {seed} (saved to {})",
                path.display()
            )
        };
        match outcome {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(_)) => {}
            Err(_) => panic!("{} panicked", case()),
        }
        assert!(took < Duration::from_secs(5), "{} took {took:?}", case());
        assert!(
            largest <= ALLOCATION_LIMIT,
            "{} allocated {largest} bytes at once from {} bytes of input",
            case(),
            input.len()
        );
        slowest = slowest.max(took);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!("{reader:?}: {INPUTS} mutated inputs, {accepted} accepted, slowest {slowest:?}");
}

#[test]
fn every_reader_survives_ten_thousand_mutated_inputs() {
    // Only this test's thread may count: the test runs alone in its binary.
    let start = Instant::now();
    for (k, reader) in Reader::ALL.into_iter().enumerate() {
        fuzz(reader, 17 + k as u64);
    }
    eprintln!("{} readers in {:?}", Reader::ALL.len(), start.elapsed());
}
