//! SIGINT and SIGTERM: a flag that training and evaluation check between
//! steps and batches, so a run stops soon, with its checkpoint written, and
//! exits 130 — within a scheduler's grace period.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Clears the flag and routes SIGINT and SIGTERM to it.
pub fn install() {
    INTERRUPTED.store(false, Ordering::SeqCst);
    // Only the first handler registration in a process succeeds; later runs reuse it.
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
}

/// Raises the flag as a signal would: another data-parallel rank was
/// interrupted, and this one stops with it.
pub fn request() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether SIGINT or SIGTERM arrived (or [`request`] was called) since
/// [`install`].
pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
