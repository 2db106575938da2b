//! Every file the run folder receives is written here, atomically: a temp file in the same
//! folder, fsynced, renamed over the target, and the folder fsynced, so that a killed run never
//! leaves a half-written file under a real name.
//!
//! # Fault injection
//!
//! Each file operation (write, fsync, rename, link, remove) is a numbered *fault point*. With
//! `AUE_FAULT_AT=N` in the environment, the N-th fault point of the process fails the way
//! `AUE_FAULT` says: `kill` (the default) sends the process SIGKILL, after leaving a torn temp
//! file when the point is a write; `enospc` makes that operation fail with "No space left on
//! device". The repository's fault-injection suite (`tests/faults.rs`) walks N over every save
//! boundary of a run this way; nothing else sets these variables.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, io_err};

/// Environment variable: the 1-based number of the fault point that fails.
pub const FAULT_AT_ENV: &str = "AUE_FAULT_AT";
/// Environment variable: how it fails, `kill` (default) or `enospc`.
pub const FAULT_KIND_ENV: &str = "AUE_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    Kill,
    NoSpace,
}

fn fault_plan() -> Option<(u64, FaultKind)> {
    static PLAN: OnceLock<Option<(u64, FaultKind)>> = OnceLock::new();
    *PLAN.get_or_init(|| {
        let at = std::env::var(FAULT_AT_ENV).ok()?.trim().parse::<u64>().ok()?;
        let kind = match std::env::var(FAULT_KIND_ENV).as_deref() {
            Ok("enospc") => FaultKind::NoSpace,
            _ => FaultKind::Kill,
        };
        Some((at, kind))
    })
}

static FAULT_POINTS: AtomicU64 = AtomicU64::new(0);

/// Counts one fault point; fails it if it is the one `AUE_FAULT_AT` names. `torn` is called
/// first when the process is about to be killed at a write (it truncates the temp file).
fn fault_point(what: &str, path: &Path, torn: impl FnOnce()) -> std::io::Result<()> {
    let Some((at, kind)) = fault_plan() else { return Ok(()) };
    let n = FAULT_POINTS.fetch_add(1, Ordering::SeqCst) + 1;
    if n != at {
        return Ok(());
    }
    match kind {
        FaultKind::Kill => {
            torn();
            tracing::warn!("fault injection: SIGKILL at point {n} ({what} {})", path.display());
            // SAFETY: getpid and kill have no preconditions; SIGKILL ends the process here.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        }
        FaultKind::NoSpace => Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
    }
}

/// The temp name `path` is written under before its rename: `.<name>.tmp.<pid>` in the same
/// folder ([`remove_stale_temp_files`] recognises it).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    folder_of(path).join(format!(".{name}.tmp.{}", std::process::id()))
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)
    })
}

/// Writes `path` atomically with `write`, which creates and fills the temp file it is given.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = temp_path(path);
    let folder = folder_of(path);
    let result = (|| {
        write(&tmp).map_err(io_err("cannot write", &tmp))?;
        fault_point("write", &tmp, || truncate_half(&tmp)).map_err(io_err("cannot write", &tmp))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .and_then(|()| fault_point("fsync", &tmp, || {}))
            .map_err(io_err("cannot fsync", &tmp))?;
        fault_point("rename", path, || {})
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(io_err("cannot rename into place", path))?;
        sync_folder(&folder);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes `dst` name the same file as `src`, atomically: a hard link under a temp name renamed
/// over `dst` (a copy where the filesystem has no hard links). `src` stays.
pub fn link_atomic(src: &Path, dst: &Path) -> Result<()> {
    let tmp = temp_path(dst);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        fault_point("link", dst, || {}).map_err(io_err("cannot link", dst))?;
        if std::fs::hard_link(src, &tmp).is_err() {
            std::fs::copy(src, &tmp).map_err(io_err("cannot copy", src))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io_err("cannot fsync", &tmp))?;
        }
        fault_point("rename", dst, || {})
            .and_then(|()| std::fs::rename(&tmp, dst))
            .map_err(io_err("cannot rename into place", dst))?;
        sync_folder(&folder_of(dst));
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Renames `from` to `to` (same folder or filesystem), durably.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fault_point("rename", to, || {})
        .and_then(|()| std::fs::rename(from, to))
        .map_err(io_err("cannot rename", from))?;
    sync_folder(&folder_of(to));
    Ok(())
}

/// Removes a file if it exists.
pub fn remove_file(path: &Path) -> Result<()> {
    remove_if_exists(path, |p| std::fs::remove_file(p))
}

/// Removes a folder and everything in it, if it exists.
pub fn remove_dir_all(path: &Path) -> Result<()> {
    remove_if_exists(path, |p| std::fs::remove_dir_all(p))
}

/// `remove(path)` behind a fault point; a path that is already gone is not an error.
fn remove_if_exists(path: &Path, remove: fn(&Path) -> std::io::Result<()>) -> Result<()> {
    fault_point("remove", path, || {}).map_err(io_err("cannot remove", path))?;
    match remove(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_err("cannot remove", path)(e).into())
        }
        _ => Ok(()),
    }
}

/// Makes renames in `folder` durable (best effort: some filesystems refuse to open folders).
fn sync_folder(folder: &Path) {
    if let Ok(d) = std::fs::File::open(folder) {
        let _ = d.sync_all();
    }
}

/// Leaves a torn file, as a kill in the middle of a write would.
fn truncate_half(path: &Path) {
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path)
        && let Ok(m) = f.metadata()
    {
        let _ = f.set_len(m.len() / 2);
    }
}

/// Removes temp files a killed run left behind in `dir` (names `.<file>.tmp.<pid>`).
pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp.") && entry.path().is_file() {
            let file = entry.path();
            tracing::debug!(file = %file.display(), "removing a temp file left by a killed run");
            let _ = std::fs::remove_file(&file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(io_err("tempdir", "/tmp"))?;
        let p = tmp.path().join("a.json");
        write_atomic(&p, b"one")?;
        write_atomic(&p, b"two")?;
        assert_eq!(std::fs::read(&p).map_err(io_err("read", &p))?, b"two");
        let n = std::fs::read_dir(tmp.path()).map_err(io_err("ls", tmp.path()))?.count();
        assert_eq!(n, 1);
        Ok(())
    }

    #[test]
    fn link_names_the_same_bytes() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(io_err("tempdir", "/tmp"))?;
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        write_atomic(&a, b"epoch 3")?;
        write_atomic(&b, b"old")?;
        link_atomic(&a, &b)?;
        assert_eq!(std::fs::read(&b).map_err(io_err("read", &b))?, b"epoch 3");
        remove_file(&a)?;
        assert_eq!(std::fs::read(&b).map_err(io_err("read", &b))?, b"epoch 3");
        Ok(())
    }

    #[test]
    fn stale_temp_files_go_and_others_stay() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(io_err("tempdir", "/tmp"))?;
        let stale = tmp.path().join(".last.safetensors.tmp.123");
        let keep = tmp.path().join("notes.tmp.txt");
        std::fs::write(&stale, b"x").map_err(io_err("write", &stale))?;
        std::fs::write(&keep, b"x").map_err(io_err("write", &keep))?;
        remove_stale_temp_files(tmp.path());
        assert!(!stale.exists() && keep.exists());
        Ok(())
    }
}
