//! One trainer per run folder: an exclusive `flock` on `RUN/lock`, held
//! until the process exits (the kernel releases it even after SIGKILL). The
//! file holds the holder's pid, so a second trainer can say who has the run.

use crate::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The held lock of a run folder; dropping it (or exiting) releases it.
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Locks the run folder `run` (creating it), or refuses at once if
    /// another trainer holds it.
    pub fn acquire(run: &Path) -> Result<RunLock> {
        fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
        let path = run.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // SAFETY: flock on a descriptor this function owns for its lifetime.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if matches!(
                err.raw_os_error(),
                Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS)
            ) {
                // Some network filesystems (NFS without locking, Lustre
                // without -o flock) have no flock: run, unprotected.
                eprintln!(
                    "warning: {}: this filesystem cannot lock ({err}); nothing stops a second trainer from using the run folder",
                    path.display()
                );
                return Ok(RunLock { _file: file });
            }
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(Error::io(&path, err));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "pid unknown".to_string(),
                pid => format!("pid {pid}"),
            };
            return Err(Error::Locked(format!(
                "{}: another trainer ({holder}) is using this run folder; wait for it to finish or stop it",
                run.display()
            )));
        }
        let write_pid = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            write!(file, "{}", std::process::id())?;
            file.flush()
        };
        write_pid(&mut file).map_err(|e| Error::io(&path, e))?;
        Ok(RunLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let dir = std::env::temp_dir().join(format!("trainer-lock-{}", std::process::id()));
        let held = RunLock::acquire(&dir).unwrap();
        // flock locks belong to the open file, so a second open conflicts
        // even within one process.
        let err = RunLock::acquire(&dir).err().unwrap();
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        assert!(RunLock::acquire(&dir).is_ok());
        let _ = fs::remove_dir_all(&dir);
    }
}
