//! Files the user names (`export --out`, `embed --out`). They are written by
//! atomic rename like the trainer's own files, but only where that replaces
//! nothing else: a symlink is followed and its target replaced, a path that
//! exists and is not a regular file (a device, a FIFO, a folder) is refused,
//! and so is any path inside a run's checkpoints, which resume relies on.

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

/// Refuses a `target` inside a checkpoint folder of any run: a checkpoint
/// folder holds `state.json`, and a run's `checkpoints/` sits beside its
/// `config.toml`.
fn refuse_checkpoint_folder(path: &Path, target: &Path) -> Result<()> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // A missing folder cannot be a checkpoint; writing then reports it.
    let Ok(folder) = fs::canonicalize(parent) else {
        return Ok(());
    };
    let inside_checkpoint = folder.ancestors().any(|dir| {
        dir.join("state.json").is_file()
            || (dir.file_name().is_some_and(|n| n == "checkpoints")
                && dir
                    .parent()
                    .is_some_and(|run| run.join("config.toml").is_file()))
    });
    if inside_checkpoint {
        return Err(Error::Usage(format!(
            "--out {}: is inside a run's checkpoints ({}); write elsewhere",
            path.display(),
            folder.display()
        )));
    }
    Ok(())
}
