//! Key files with a real passphrase: loose modes, symlinks, a wrong passphrase and
//! tampered KDF parameters are refused with a message saying what to do, and nothing
//! is changed by the refused attempt.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::helpers::{stderr, Dirs};

const PASSPHRASE: &str = "correct horse battery staple";

struct Setup {
    dirs: Dirs,
    pass: std::path::PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dirs = Dirs::new();
        let pass = dirs.root.path().join("passphrase");
        fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
        let tok = dirs.root.path().join("admin-token");
        let out = dirs.cmd(&["init", "--admin-token-file", tok.to_str().unwrap()]).env("LATCHKEY_PASSPHRASE_FILE", &pass).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(fs::metadata(&tok).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(fs::read_to_string(&tok).unwrap().starts_with("lka_"));
        Setup { dirs, pass }
    }

    fn key_file(&self) -> std::path::PathBuf {
        self.dirs.keys().join("master-v1.key")
    }

    /// Runs `keys verify` (which must unlock the key) with the given passphrase file.
    fn verify_with(&self, pass: &std::path::Path) -> std::process::Output {
        self.dirs.cmd(&["keys", "verify"]).env("LATCHKEY_PASSPHRASE_FILE", pass).output().unwrap()
    }

    fn audit_len(&self) -> i64 {
        self.dirs.sql().int("SELECT count(*) FROM audit").unwrap()
    }

    /// Runs a command expected to be refused; checks the message and that neither the
    /// key file nor the database changed.
    fn refused(&self, out: std::process::Output, expect: &[&str]) {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "expected refusal, got {:?}: {err}", out.status);
        for e in expect {
            assert!(err.contains(e), "message should mention {e:?}: {err}");
        }
    }
}

#[test]
fn init_creates_protected_keys_and_refuses_to_run_twice() {
    let s = Setup::new();
    assert_eq!(fs::metadata(s.dirs.keys()).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(fs::metadata(s.key_file()).unwrap().permissions().mode() & 0o777, 0o600);
    let key = fs::read(s.key_file()).unwrap();
    assert_eq!(&key[..4], b"LKMK");
    assert_eq!(key[9], 1, "argon2id");
    assert_eq!(u32::from_be_bytes(key[10..14].try_into().unwrap()), 64 * 1024, "64 MiB");
    assert_eq!(u32::from_be_bytes(key[14..18].try_into().unwrap()), 3);
    assert_eq!(u32::from_be_bytes(key[18..22].try_into().unwrap()), 4);

    let again = s.dirs.cmd(&["init"]).env("LATCHKEY_PASSPHRASE_FILE", &s.pass).output().unwrap();
    s.refused(again, &["already"]);
    assert_eq!(fs::read(s.key_file()).unwrap(), key, "re-init must not touch the key");
    let ok = s.verify_with(&s.pass);
    assert!(ok.status.success(), "{}", stderr(&ok));
}

#[test]
fn unsafe_key_files_and_bad_passphrases_are_refused_without_changes() {
    let s = Setup::new();
    let original = fs::read(s.key_file()).unwrap();
    let audit_before = s.audit_len();

    // Key file readable by others.
    fs::set_permissions(s.key_file(), fs::Permissions::from_mode(0o644)).unwrap();
    s.refused(s.verify_with(&s.pass), &["0644", "chmod 600"]);
    let serve = s.dirs.cmd(&["serve"]).env("LATCHKEY_PASSPHRASE_FILE", &s.pass).env("LATCHKEY_BIND", "127.0.0.1:0").output().unwrap();
    s.refused(serve, &["chmod 600"]);
    fs::set_permissions(s.key_file(), fs::Permissions::from_mode(0o600)).unwrap();

    // Keys directory open to the group.
    fs::set_permissions(s.dirs.keys(), fs::Permissions::from_mode(0o750)).unwrap();
    s.refused(s.verify_with(&s.pass), &["chmod 700"]);
    fs::set_permissions(s.dirs.keys(), fs::Permissions::from_mode(0o700)).unwrap();

    // Key file replaced by a symlink (to a file with good permissions).
    let elsewhere = s.dirs.root.path().join("moved.key");
    fs::rename(s.key_file(), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, s.key_file()).unwrap();
    s.refused(s.verify_with(&s.pass), &["symlink"]);
    fs::remove_file(s.key_file()).unwrap();
    fs::rename(&elsewhere, s.key_file()).unwrap();

    // Wrong passphrase; no passphrase at all.
    let wrong = s.dirs.root.path().join("wrong");
    fs::write(&wrong, "not the passphrase at all").unwrap();
    s.refused(s.verify_with(&wrong), &["wrong passphrase", "LATCHKEY_PASSPHRASE_FILE"]);
    s.refused(s.dirs.run(&["keys", "verify"]), &["LATCHKEY_PASSPHRASE_FILE"]);

    // Tampered KDF parameters: raised past the cap, lowered within it, below the floor.
    for (offset, value, expect) in [
        (10usize, u32::MAX, "outside the allowed range"),
        (14, 4, "wrong passphrase, or the file was modified"),
        (18, 1, "outside the allowed range"),
    ] {
        let mut t = original.clone();
        t[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
        fs::write(s.key_file(), &t).unwrap();
        s.refused(s.verify_with(&s.pass), &[expect, "backup"]);
        assert_eq!(fs::read(s.key_file()).unwrap(), t, "latchkey must not rewrite a key file it refused");
    }
    fs::write(s.key_file(), &original).unwrap();

    // Nothing changed: the key is intact and no audit record was written by refusals.
    assert_eq!(s.audit_len(), audit_before);
    let ok = s.verify_with(&s.pass);
    assert!(ok.status.success(), "{}", stderr(&ok));
}

#[test]
fn rotation_with_a_passphrase_creates_a_protected_readable_version() {
    let s = Setup::new();
    let out = s.dirs.cmd(&["keys", "rotate"]).env("LATCHKEY_PASSPHRASE_FILE", &s.pass).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v2 = s.dirs.keys().join("master-v2.key");
    assert_eq!(fs::metadata(&v2).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::read(&v2).unwrap()[9], 1, "v2 is passphrase-protected too");
    let wrong = s.dirs.root.path().join("wrong");
    fs::write(&wrong, "not the passphrase at all").unwrap();
    s.refused(s.verify_with(&wrong), &["wrong passphrase"]);
    assert!(s.verify_with(&s.pass).status.success());
}

/// A read-only bind mount of `src` at a new directory; unmounted on drop.
struct ReadOnlyMount(std::path::PathBuf);

impl ReadOnlyMount {
    fn new(src: &std::path::Path, at: std::path::PathBuf) -> ReadOnlyMount {
        fs::create_dir(&at).unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("mount").args(args).output().expect("mount(8)");
            assert!(out.status.success(), "mount {args:?} (the test needs root, as CI has): {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["--bind", src.to_str().unwrap(), at.to_str().unwrap()]);
        let m = ReadOnlyMount(at);
        run(&["-o", "remount,bind,ro", m.0.to_str().unwrap()]);
        m
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Kubernetes mounts a secret as `..<timestamp>/` with the files, `..data` → it, and one
/// symlink per file through `..data`, all 0644 on a read-only volume. Mounted mode takes
/// that, and nothing weaker: a writable directory, a symlink out of the directory, an
/// unprotected key.
#[test]
fn mounted_keys_accept_the_kubernetes_layout_on_a_read_only_mount_only() {
    use std::os::unix::fs::symlink;
    let s = Setup::new();
    // The secret as the platform would lay it out (the source of the mount).
    let secret = s.dirs.root.path().join("secret-src");
    let stamp = secret.join("..2026_12_01_10_00_00.000000001");
    fs::create_dir_all(&stamp).unwrap();
    fs::copy(s.key_file(), stamp.join("master-v1.key")).unwrap();
    fs::set_permissions(stamp.join("master-v1.key"), fs::Permissions::from_mode(0o644)).unwrap();
    symlink("..2026_12_01_10_00_00.000000001", secret.join("..data")).unwrap();
    symlink("..data/master-v1.key", secret.join("master-v1.key")).unwrap();
    // Kubernetes mounts the volume's root 1777; the read-only mount is what counts.
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(&stamp, fs::Permissions::from_mode(0o755)).unwrap();
    let mounted = |keys: &std::path::Path, args: &[&str]| {
        s.dirs
            .cmd(args)
            .env("LATCHKEY_KEYS_DIR", keys)
            .env("LATCHKEY_KEYS_MOUNTED", "true")
            .env("LATCHKEY_PASSPHRASE_FILE", &s.pass)
            .output()
            .unwrap()
    };

    // Not a mount at all: refused, saying why.
    let out = mounted(&secret, &["keys", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not on a read-only mount"), "{}", stderr(&out));

    // The same files on a read-only mount: accepted (0644 files, symlinks inside).
    let mount = ReadOnlyMount::new(&secret, s.dirs.root.path().join("keys-mounted"));
    let out = mounted(&mount.0, &["keys", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Nothing is ever written there: a rotation says where the new file must come from.
    let out = mounted(&mount.0, &["keys", "rotate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("read-only mount") && stderr(&out).contains("writable copy"), "{}", stderr(&out));
    let out = mounted(&mount.0, &["init"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    drop(mount);

    // A symlink that leads out of the directory is refused, even on a read-only mount.
    fs::remove_file(secret.join("master-v1.key")).unwrap();
    symlink(s.key_file(), secret.join("master-v1.key")).unwrap();
    let mount = ReadOnlyMount::new(&secret, s.dirs.root.path().join("keys-mounted-2"));
    let out = mounted(&mount.0, &["keys", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("outside the keys directory"), "{}", stderr(&out));
    drop(mount);

    // An unprotected key file is refused: a mounted file may be readable by others.
    let plain = Dirs::new();
    assert!(plain.run(&["init", "--no-passphrase"]).status.success());
    fs::remove_file(secret.join("master-v1.key")).unwrap();
    fs::copy(plain.keys().join("master-v1.key"), stamp.join("master-v1.key")).unwrap();
    fs::set_permissions(stamp.join("master-v1.key"), fs::Permissions::from_mode(0o644)).unwrap();
    symlink("..data/master-v1.key", secret.join("master-v1.key")).unwrap();
    let mount = ReadOnlyMount::new(&secret, s.dirs.root.path().join("keys-mounted-3"));
    let out = mounted(&mount.0, &["keys", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not passphrase-protected"), "{}", stderr(&out));
}
