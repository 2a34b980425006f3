//! Files the user names (`export --out`, `embed --out`). They are written by
//! atomic rename like the trainer's own files, but only where that replaces
//! nothing else: a symlink is followed and its target replaced, a path that
//! exists and is not a regular file (a device, a FIFO, a folder) is refused,
//! and so is a run folder's own files and its checkpoints, which resume
//! relies on.

use crate::{Error, Result};
use nets::weights::write_atomic;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Writes `bytes` to the user-named file `path` (see the module comment).
pub fn write_user_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let target = resolve_target(path)?;
    refuse_checkpoint_folder(path, &target)?;
    write_atomic(&target, bytes)?;
    Ok(())
}

/// The file to replace: `path`, or what a symlink there points to.
fn resolve_target(path: &Path) -> Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(path.to_path_buf()),
        Err(e) => Err(Error::io(path, e)),
        Ok(_) => {
            let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
            if !meta.is_file() {
                return Err(Error::Usage(format!(
                    "--out {}: exists and is not a regular file; refusing to replace it",
                    path.display()
                )));
            }
            fs::canonicalize(path).map_err(|e| Error::io(path, e))
        }
    }
}

/// The files a run folder holds besides its checkpoints.
const RUN_FILES: [&str; 6] = [
    "config.toml",
    "metrics.jsonl",
    "lock",
    "summary.json",
    "curves.png",
    "profile.txt",
];

/// Refuses a `target` that is a run's own file or lies in a run's
/// checkpoints: a checkpoint folder (`step-N` holding `state.json`), a
/// run's `checkpoints/` (holding `latest`), or one of [`RUN_FILES`] of a run
/// folder (a `config.toml` beside `checkpoints/latest`); other files may
/// go in a run folder. Only the target's folder and
/// the one above are looked at, so an ordinary project folder that happens
/// to hold a `config.toml` and a `checkpoints/` is not mistaken for a run.
fn refuse_checkpoint_folder(path: &Path, target: &Path) -> Result<()> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // A missing folder cannot be a checkpoint; writing then reports it.
    let Ok(folder) = fs::canonicalize(parent) else {
        return Ok(());
    };
    let is_checkpoint = |dir: &Path| {
        dir.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
            && dir.join("state.json").is_file()
    };
    let is_checkpoints = |dir: &Path| {
        dir.file_name().is_some_and(|n| n == "checkpoints") && dir.join("latest").is_file()
    };
    let is_run = |dir: &Path| {
        dir.join("config.toml").is_file() && dir.join("checkpoints").join("latest").is_file()
    };
    let own_file = target
        .file_name()
        .is_some_and(|n| RUN_FILES.iter().any(|f| n == *f));
    let inside = (own_file && is_run(&folder))
        || is_checkpoints(&folder)
        || is_checkpoint(&folder)
        || folder.parent().is_some_and(is_checkpoints);
    if inside {
        return Err(Error::Usage(format!(
            "--out {}: is in a run's folder or checkpoints ({}), which resume relies on; write elsewhere",
            path.display(),
            folder.display()
        )));
    }
    Ok(())
}
