//! The keys directory on disk: mode checks, atomic writes, read-back.
//!
//! Files are `master-v<N>.key`, mode 0600, in a directory of mode 0700. Anything
//! looser, or a symlink in either place, is refused with a message saying how to fix it.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::KeyError;

#[derive(Debug, Clone)]
pub struct KeyDir {
    path: PathBuf,
}

fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> KeyError {
    let path = path.display().to_string();
    let what = what.to_owned();
    move |e| KeyError::Io(format!("{what} {path}: {e}"))
}

impl KeyDir {
    /// Opens an existing keys directory after checking its type and mode.
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        let meta = fs::symlink_metadata(path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => KeyError::NotInitialised(path.display().to_string()),
            _ => KeyError::Io(format!("cannot read keys directory {}: {e}", path.display())),
        })?;
        if meta.file_type().is_symlink() {
            return Err(KeyError::Insecure(format!(
                "keys directory {} is a symlink; point LATCHKEY_KEYS_DIR at the real directory",
                path.display()
            )));
        }
        if !meta.is_dir() {
            return Err(KeyError::Insecure(format!("{} is not a directory", path.display())));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Insecure(format!(
                "keys directory {} has mode {mode:04o}; it must not be accessible to group or others: run `chmod 700 {}`",
                path.display(),
                path.display()
            )));
        }
        Ok(KeyDir { path: path.to_owned() })
    }

    /// Creates the keys directory (mode 0700). Fails if it holds key files already.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        match fs::symlink_metadata(path) {
            // An existing directory we are initialising (e.g. the repository's `keys/`,
            // checked out 0755) is tightened to 0700 before any key goes in.
            Ok(m) if m.is_dir() && !m.file_type().is_symlink() => {
                fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io(path, "cannot set mode 0700 on"))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io(path, "cannot create keys directory"))?;
            }
            Err(e) => return Err(KeyError::Io(format!("cannot read keys directory {}: {e}", path.display()))),
        }
        let dir = Self::open(path)?;
        if !dir.versions()?.is_empty() {
            return Err(KeyError::AlreadyInitialised(path.display().to_string()));
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_path(&self, version: u32) -> PathBuf {
        self.path.join(format!("master-v{version}.key"))
    }

    /// Versions with a key file present, ascending.
    pub fn versions(&self) -> Result<Vec<u32>, KeyError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.path).map_err(io(&self.path, "cannot list"))? {
            let entry = entry.map_err(io(&self.path, "cannot list"))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(v) = name.strip_prefix("master-v").and_then(|r| r.strip_suffix(".key")).and_then(|v| v.parse().ok()) {
                out.push(v);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Checks the file for `version` (type and mode) without reading it.
    pub fn check(&self, version: u32) -> Result<(), KeyError> {
        let path = self.file_path(version);
        let meta = fs::symlink_metadata(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => KeyError::Missing { version, path: path.display().to_string() },
            _ => KeyError::Io(format!("cannot read {}: {e}", path.display())),
        })?;
        if meta.file_type().is_symlink() {
            return Err(KeyError::Insecure(format!("key file {} is a symlink; replace it with the real file (mode 0600)", path.display())));
        }
        if !meta.is_file() {
            return Err(KeyError::Insecure(format!("key file {} is not a regular file", path.display())));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Insecure(format!(
                "key file {} has mode {mode:04o}; it must be readable by its owner only: run `chmod 600 {}`",
                path.display(),
                path.display()
            )));
        }
        Ok(())
    }

    /// Reads the file for `version` after [`KeyDir::check`]. `O_NOFOLLOW` closes the
    /// window between the check and the open.
    pub fn read(&self, version: u32) -> Result<Vec<u8>, KeyError> {
        self.check(version)?;
        let path = self.file_path(version);
        let mut f = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path).map_err(io(&path, "cannot open key file"))?;
        let mut buf = Vec::with_capacity(128);
        std::io::Read::read_to_end(&mut f, &mut buf).map_err(io(&path, "cannot read key file"))?;
        Ok(buf)
    }

    /// Writes a new key file atomically: temp file (0600), fsync, rename, fsync the
    /// directory. Refuses to replace an existing file.
    pub fn write_new(&self, version: u32, bytes: &[u8]) -> Result<(), KeyError> {
        let path = self.file_path(version);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(KeyError::Io(format!("refusing to overwrite existing key file {}", path.display())));
        }
        let tmp = self.path.join(format!(".master-v{version}.key.tmp"));
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io(&tmp, "cannot create"))?;
        f.write_all(bytes).map_err(io(&tmp, "cannot write"))?;
        f.sync_all().map_err(io(&tmp, "cannot fsync"))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io(&path, "cannot rename into place"))?;
        self.sync()
    }

    /// Removes the key file for `version` (after it was destroyed in the database).
    pub fn remove(&self, version: u32) -> Result<(), KeyError> {
        let path = self.file_path(version);
        match fs::remove_file(&path) {
            Ok(()) => self.sync(),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(KeyError::Io(format!("cannot remove {}: {e}", path.display()))),
        }
    }

    fn sync(&self) -> Result<(), KeyError> {
        File::open(&self.path).and_then(|d| d.sync_all()).map_err(io(&self.path, "cannot fsync"))
    }
}
