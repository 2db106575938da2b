//! Atomic file writes for the run folder: a temp file in the same folder, fsynced, then renamed
//! over the target, so a killed run never leaves a half-written config or metrics file.

use std::io::Write;
use std::path::Path;

use crate::error::{Result, io_err};

/// Writes `bytes` to `path` atomically (temp file beside it, fsync, rename, fsync the folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
        f.write_all(bytes).map_err(io_err("cannot write", &tmp))?;
        f.sync_all().map_err(io_err("cannot fsync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io_err("cannot rename into place", path))?;
        // The rename itself is durable only once the folder is synced (best effort: some
        // filesystems refuse to open folders for syncing).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes temp files a killed run left behind in `dir` (names `.<file>.tmp.<pid>`, ours and
/// aue-model's `<file>.tmp` convention alike).
pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.contains(".tmp") && entry.path().is_file() {
            let file = entry.path();
            tracing::debug!(file = %file.display(), "removing a temp file left by a killed run");
            let _ = std::fs::remove_file(entry.path());
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
}
