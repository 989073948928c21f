//! The keys directory on disk: mode checks, atomic writes, read-back.
//!
//! Files are `master-v<N>.key`, mode 0600, in a directory of mode 0700. Anything
//! looser, or a symlink in either place, is refused with a message saying how to fix it.
//!
//! *Mounted* mode is for key files provided by the platform (Kubernetes or compose
//! secrets): files are often 0644 and reached through a `..data` symlink, and the mount's
//! root may be 1777. What protects them is checked instead: the directory is on a
//! read-only mount (nobody writes there, whatever the modes), it and the files belong
//! to root or this user, symlinks resolve inside it, and latchkey never writes there. (The files must also be passphrase-protected: see
//! [`super::KeyRing::open_mounted`].)

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::KeyError;

#[derive(Debug, Clone)]
pub struct KeyDir {
    path: PathBuf,
    /// Platform-provided files on a read-only mount (see the module docs).
    mounted: bool,
}

/// The mount options of the mount holding `path` (from /proc/self/mountinfo).
fn mount_options(path: &Path) -> Result<String, KeyError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(io(Path::new("/proc/self/mountinfo"), "cannot read"))?;
    mount_options_in(&info, path).ok_or_else(|| KeyError::Io(format!("no mount holds {}", path.display())))
}

/// The per-mount options of the longest mount point that contains `path`.
fn mount_options_in(mountinfo: &str, path: &Path) -> Option<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let point = f.get(4)?.replace("\\040", " ");
            Some((PathBuf::from(point), f.get(5)?.to_string()))
        })
        .filter(|(point, _)| path.starts_with(point))
        .max_by_key(|(point, _)| point.as_os_str().len())
        .map(|(_, opts)| opts)
}

/// This process's user id (the owner of /proc/self).
fn own_uid() -> Result<u32, KeyError> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata("/proc/self").map_err(io(Path::new("/proc/self"), "cannot read"))?.uid())
}

/// Owned by root or this user.
fn owned(path: &Path, meta: &fs::Metadata, uid: u32) -> Result<(), KeyError> {
    use std::os::unix::fs::MetadataExt;
    if meta.uid() != 0 && meta.uid() != uid {
        return Err(KeyError::Insecure(format!("{} belongs to user {}, neither root nor this process's user", path.display(), meta.uid())));
    }
    Ok(())
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
        Ok(KeyDir { path: path.to_owned(), mounted: false })
    }

    /// Opens a platform-provided keys directory on a read-only mount (mounted mode).
    pub fn open_mounted(path: &Path) -> Result<Self, KeyError> {
        let real = fs::canonicalize(path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => KeyError::NotInitialised(path.display().to_string()),
            _ => KeyError::Io(format!("cannot read keys directory {}: {e}", path.display())),
        })?;
        let meta = fs::metadata(&real).map_err(io(&real, "cannot read"))?;
        if !meta.is_dir() {
            return Err(KeyError::Insecure(format!("{} is not a directory", path.display())));
        }
        // Its mode is not checked: a read-only mount cannot be written whatever the mode
        // says (Kubernetes mounts a secret volume's root 1777). Its owner is.
        owned(&real, &meta, own_uid()?)?;
        let opts = mount_options(&real)?;
        if !opts.split(',').any(|o| o == "ro") {
            return Err(KeyError::Insecure(format!(
                "keys directory {} is not on a read-only mount (options {opts}); mounted mode needs one (a secret volume), or turn keys_mounted off",
                path.display()
            )));
        }
        Ok(KeyDir { path: real, mounted: true })
    }

    pub fn is_mounted(&self) -> bool {
        self.mounted
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

    /// The real file behind `version` in a mounted directory: a symlink must resolve
    /// inside the directory (Kubernetes' `..data` layout), to a regular file that only
    /// root or this user can change.
    fn check_mounted(&self, version: u32) -> Result<PathBuf, KeyError> {
        let path = self.file_path(version);
        let real = fs::canonicalize(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => KeyError::Missing { version, path: path.display().to_string() },
            _ => KeyError::Io(format!("cannot read {}: {e}", path.display())),
        })?;
        if !real.starts_with(&self.path) {
            return Err(KeyError::Insecure(format!("key file {} leads outside the keys directory", path.display())));
        }
        let meta = fs::metadata(&real).map_err(io(&real, "cannot read"))?;
        if !meta.is_file() {
            return Err(KeyError::Insecure(format!("key file {} is not a regular file", path.display())));
        }
        owned(&path, &meta, own_uid()?)?;
        Ok(real)
    }

    /// Checks the file for `version` (type and mode) without reading it.
    pub fn check(&self, version: u32) -> Result<(), KeyError> {
        if self.mounted {
            return self.check_mounted(version).map(|_| ());
        }
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
        let path = if self.mounted {
            self.check_mounted(version)?
        } else {
            self.check(version)?;
            self.file_path(version)
        };
        let mut f = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path).map_err(io(&path, "cannot open key file"))?;
        let mut buf = Vec::with_capacity(128);
        std::io::Read::read_to_end(&mut f, &mut buf).map_err(io(&path, "cannot read key file"))?;
        Ok(buf)
    }

    /// Writes a new key file atomically: temp file (0600), fsync, rename, fsync the
    /// directory. Refuses to replace an existing file.
    pub fn write_new(&self, version: u32, bytes: &[u8]) -> Result<(), KeyError> {
        let path = self.file_path(version);
        if self.mounted {
            return Err(KeyError::Io(format!(
                "the keys directory is a read-only mount: create master-v{version}.key with `latchkey keys rotate` on a host with a writable copy of the keys, add it to the mounted secret, then run this again"
            )));
        }
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
        if self.mounted {
            return Err(KeyError::Io(format!(
                "the keys directory is a read-only mount: remove {} from the mounted secret",
                path.display()
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_mount_point_holding_a_path_gives_its_options() {
        let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    40 22 0:50 / /var/run/secrets/keys ro,relatime - tmpfs tmpfs rw\n\
                    41 22 0:51 / /var/run/secrets/keys-other rw,relatime - tmpfs tmpfs rw\n";
        assert_eq!(mount_options_in(info, Path::new("/var/run/secrets/keys")).as_deref(), Some("ro,relatime"));
        assert_eq!(mount_options_in(info, Path::new("/var/run/secrets/keys/..data")).as_deref(), Some("ro,relatime"));
        assert_eq!(mount_options_in(info, Path::new("/var/run/secrets/keys-other")).as_deref(), Some("rw,relatime"));
        assert_eq!(mount_options_in(info, Path::new("/etc")).as_deref(), Some("rw,relatime"));
    }
}
