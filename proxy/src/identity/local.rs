//! The per-user CA for standalone use: a root and its key kept in a private directory, made
//! by whichever sidecar starts first and loaded by every later one.
//!
//! The directory is trusted only if this user alone can change it, since whoever can swap
//! `ca.key` can mint any identity. Creation is race-safe: each starter writes private temp
//! files and hard-links them into place, and `link` refuses to replace, so exactly one wins
//! and the others load the winner's files.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Authority, IdentityError};

const CERT_FILE: &str = "ca.pem";
const KEY_FILE: &str = "ca.key";
/// How long a sidecar that lost the creation race waits for the winner's `ca.pem`.
const PEER_CREATION_WAIT: Duration = Duration::from_secs(3);

/// The on-disk home of the local CA: `ca.pem` (root) and `ca.key` (PKCS#8) in one directory.
#[derive(Debug)]
pub struct LocalAuthority;

impl LocalAuthority {
    /// Loads the CA in `dir`, creating the directory (0700) and a new root for
    /// `trust_domain` if there is none yet.
    pub fn open_or_create(dir: &Path, trust_domain: &str) -> Result<Authority, IdentityError> {
        check_ancestors(dir)?;
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir, "create the CA directory"))?;
        check_private_dir(dir)?;

        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        if !exists(&key_path)? {
            if exists(&cert_path)? {
                return Err(IdentityError::UnsafeCaFiles {
                    path: cert_path,
                    problem: format!("the CA certificate is there but its key `{KEY_FILE}` is missing"),
                    fix: "restore the key, or remove the certificate to create a new CA (every sidecar must then be restarted)".to_owned(),
                });
            }
            let authority = Authority::generate(trust_domain)?;
            if publish(dir, &authority)? {
                return Ok(authority);
            }
            // Another sidecar published first; use its CA so both trust the same root.
        }
        load(dir, &key_path, &cert_path, trust_domain)
    }
}

fn load(
    dir: &Path,
    key_path: &Path,
    cert_path: &Path,
    trust_domain: &str,
) -> Result<Authority, IdentityError> {
    wait_for_cert(cert_path)?;
    let key_pem = read_private(key_path, "key file", 0o077)?;
    let cert_pem = read_private(cert_path, "certificate file", 0o022)?;
    let authority = Authority::from_pem(&cert_pem, &key_pem).map_err(|err| {
        IdentityError::UnsafeCaFiles {
            path: dir.to_owned(),
            problem: format!("the CA files there are unusable: {err}"),
            fix: format!("remove `{CERT_FILE}` and `{KEY_FILE}` to create a new CA (every sidecar must then be restarted)"),
        }
    })?;
    if authority.trust_domain() != trust_domain {
        return Err(IdentityError::TrustDomainMismatch {
            path: cert_path.to_owned(),
            found: authority.trust_domain().to_owned(),
            wanted: trust_domain.to_owned(),
        });
    }
    Ok(authority)
}

/// Links the new CA's files into place; false if another sidecar's CA got there first.
fn publish(dir: &Path, authority: &Authority) -> Result<bool, IdentityError> {
    let stamp = format!("{}.{:016x}", std::process::id(), fastrand::u64(..));
    let key_tmp = TempFile::write(
        dir.join(format!(".{KEY_FILE}.{stamp}")),
        authority.key_pem().as_bytes(),
    )?;
    let cert_tmp = TempFile::write(
        dir.join(format!(".{CERT_FILE}.{stamp}")),
        authority.root_pem().as_bytes(),
    )?;
    // The key is the commit point: whoever links it owns the CA, then adds the certificate.
    let key_path = dir.join(KEY_FILE);
    match fs::hard_link(&key_tmp.path, &key_path) {
        Ok(()) => {}
        Err(err) if err.kind() == ErrorKind::AlreadyExists => return Ok(false),
        Err(err) => return Err(io(&key_path, "install the CA key")(err)),
    }
    let cert_path = dir.join(CERT_FILE);
    fs::hard_link(&cert_tmp.path, &cert_path)
        .map_err(io(&cert_path, "install the CA certificate"))?;
    Ok(true)
}

/// The winner links `ca.key` before `ca.pem`, so a loser may briefly see only the key.
fn wait_for_cert(cert_path: &Path) -> Result<(), IdentityError> {
    let deadline = Instant::now() + PEER_CREATION_WAIT;
    while !exists(cert_path)? {
        if Instant::now() >= deadline {
            return Err(IdentityError::UnsafeCaFiles {
                path: cert_path.to_owned(),
                problem: format!("the CA certificate is missing although `{KEY_FILE}` exists (was a sidecar stopped while creating the CA?)"),
                fix: format!("remove `{KEY_FILE}` from the directory to create a new CA"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Every directory above the CA's must be one that only this user (or root) can rearrange:
/// owned by either, and not writable by others unless sticky (as /tmp is). Otherwise whoever
/// owns it could swap the CA directory for one of their own between check and use.
fn check_ancestors(dir: &Path) -> Result<(), IdentityError> {
    let me = nix::unistd::geteuid().as_raw();
    let absolute = std::path::absolute(dir).map_err(io(dir, "resolve the CA directory"))?;
    for ancestor in absolute.ancestors().skip(1) {
        let meta = match fs::metadata(ancestor) {
            Ok(meta) => meta,
            // Not there yet: created below by this sidecar, owned by this user.
            Err(err) if err.kind() == ErrorKind::NotFound => continue,
            Err(err) => return Err(io(ancestor, "inspect a directory above the CA")(err)),
        };
        let owner_ok = meta.uid() == me || meta.uid() == 0;
        let mode = meta.mode();
        let sticky = mode & 0o1000 != 0;
        if !owner_ok || (mode & 0o022 != 0 && !sticky) {
            return Err(IdentityError::UnsafeCaFiles {
                path: ancestor.to_owned(),
                problem: format!(
                    "a directory above the CA is owned by uid {} with mode {:04o}: another user could replace the CA directory inside it",
                    meta.uid(),
                    mode & 0o7777
                ),
                fix: format!(
                    "put the CA elsewhere with --ca-dir (or set XDG_RUNTIME_DIR), or make {} owned by uid {me} and not writable by others",
                    ancestor.display()
                ),
            });
        }
    }
    Ok(())
}

/// Reads a CA file without following a symbolic link, checking the file it opened (not the
/// path, which could change in between): a regular file of this user's with no permission
/// bits in `forbidden`.
fn read_private(path: &Path, what: &str, forbidden: u32) -> Result<String, IdentityError> {
    use std::io::Read;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|err| match err.raw_os_error() {
            Some(code) if code == nix::errno::Errno::ELOOP as i32 => IdentityError::UnsafeCaFiles {
                path: path.to_owned(),
                problem: format!("the CA {what} is a symbolic link"),
                fix: "replace the link with the file itself".to_owned(),
            },
            _ => io(path, "open a CA file")(err),
        })?;
    let meta = file.metadata().map_err(io(path, "inspect a CA file"))?;
    if !meta.is_file() {
        return Err(IdentityError::UnsafeCaFiles {
            path: path.to_owned(),
            problem: format!("the CA {what} is not a regular file"),
            fix: "restore the file, or remove the CA directory to create a new CA".to_owned(),
        });
    }
    check_owner(path, &meta, what)?;
    let mode = meta.mode() & 0o777;
    if mode & forbidden != 0 {
        return Err(IdentityError::UnsafeCaFiles {
            path: path.to_owned(),
            problem: format!("the CA {what} has mode {mode:04o}: group or others may read or change it, and with it mint any identity"),
            fix: format!("run `chmod 600 {}`", path.display()),
        });
    }
    let mut text = String::new();
    // A CA file is a few hundred bytes; a huge one is not ours.
    (&mut file)
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(io(path, "read a CA file"))?;
    Ok(text)
}

fn check_private_dir(dir: &Path) -> Result<(), IdentityError> {
    let meta = fs::symlink_metadata(dir).map_err(io(dir, "inspect the CA directory"))?;
    if meta.file_type().is_symlink() {
        return Err(IdentityError::UnsafeCaFiles {
            path: dir.to_owned(),
            problem: "the CA directory is a symbolic link".to_owned(),
            fix: "point --ca-dir at the directory itself".to_owned(),
        });
    }
    if !meta.is_dir() {
        return Err(IdentityError::UnsafeCaFiles {
            path: dir.to_owned(),
            problem: "this is not a directory".to_owned(),
            fix: "choose a directory for the local CA".to_owned(),
        });
    }
    check_owner(dir, &meta, "directory")?;
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(IdentityError::UnsafeCaFiles {
            path: dir.to_owned(),
            problem: format!("the CA directory is writable by group or others (mode {mode:04o}), so they could replace the CA"),
            fix: format!("run `chmod 700 {}`", dir.display()),
        });
    }
    Ok(())
}

fn check_owner(path: &Path, meta: &fs::Metadata, what: &str) -> Result<(), IdentityError> {
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(IdentityError::UnsafeCaFiles {
            path: path.to_owned(),
            problem: format!(
                "the CA {what} is owned by uid {}, but this sidecar runs as uid {me}",
                meta.uid()
            ),
            fix: format!("use a CA directory of your own, or `chown {me}` it if it is yours"),
        });
    }
    Ok(())
}

fn exists(path: &Path) -> Result<bool, IdentityError> {
    path.try_exists().map_err(io(path, "look for"))
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> IdentityError {
    let path = path.to_owned();
    move |source| IdentityError::Io {
        path,
        action,
        source,
    }
}

/// A 0600 file written in full before anyone links to it; removed when dropped, which
/// leaves the linked name in place.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn write(path: PathBuf, contents: &[u8]) -> Result<TempFile, IdentityError> {
        let mut file: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path, "create a CA file"))?;
        let temp = TempFile { path };
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(io(&temp.path, "write a CA file"))?;
        Ok(temp)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Best effort: a leftover dot-file is harmless and never read.
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn creates_a_private_directory_and_private_files() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("outrigger").join("ca");
        let ca = LocalAuthority::open_or_create(&dir, "cluster.local").unwrap();
        assert_eq!(ca.trust_domain(), "cluster.local");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca.pem")), 0o600);
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["ca.key", "ca.pem"], "temp files are cleaned up");
    }

    #[test]
    fn reopening_loads_the_same_root() {
        let base = tempfile::tempdir().unwrap();
        let first = LocalAuthority::open_or_create(base.path(), "cluster.local").unwrap();
        let again = LocalAuthority::open_or_create(base.path(), "cluster.local").unwrap();
        assert_eq!(first.root_der(), again.root_der());
    }

    #[test]
    fn concurrent_starters_all_end_up_with_one_root() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("ca");
        let roots: Vec<_> = std::thread::scope(|scope| {
            let starters: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| LocalAuthority::open_or_create(&dir, "cluster.local")))
                .collect();
            starters
                .into_iter()
                .map(|s| s.join().unwrap().unwrap().root_der().clone())
                .collect()
        });
        assert!(roots.iter().all(|root| *root == roots[0]));
    }

    #[test]
    fn refuses_a_group_writable_directory() {
        let base = tempfile::tempdir().unwrap();
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o770)).unwrap();
        let err = LocalAuthority::open_or_create(base.path(), "cluster.local").unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&base.path().display().to_string()),
            "{message}"
        );
        assert!(
            message.contains("writable by group or others (mode 0770)"),
            "{message}"
        );
        assert!(
            message.contains(&format!("chmod 700 {}", base.path().display())),
            "{message}"
        );
        assert!(!base.path().join("ca.key").exists(), "nothing is written");
    }

    #[test]
    fn refuses_a_directory_above_it_that_others_may_write() {
        // Another user who owns (or may write) a directory above the CA could swap the CA
        // directory for one of their own between our checks and our reads.
        let base = tempfile::tempdir().unwrap();
        let shared = base.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        let err =
            LocalAuthority::open_or_create(&shared.join("registry").join("ca"), "cluster.local")
                .unwrap_err()
                .to_string();
        assert!(err.contains(&shared.display().to_string()), "{err}");
        assert!(err.contains("mode 0777"), "{err}");
        assert!(
            err.contains("another user could replace the CA directory"),
            "{err}"
        );
        // Sticky, as /tmp is: others cannot rename what is ours inside it.
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        LocalAuthority::open_or_create(&shared.join("registry").join("ca"), "cluster.local")
            .expect("a sticky world-writable parent is safe");
    }

    #[test]
    fn refuses_a_key_that_is_a_symbolic_link() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("ca");
        LocalAuthority::open_or_create(&dir, "cluster.local").unwrap();
        let elsewhere = base.path().join("elsewhere.key");
        fs::rename(dir.join("ca.key"), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("ca.key")).unwrap();
        let err = LocalAuthority::open_or_create(&dir, "cluster.local")
            .unwrap_err()
            .to_string();
        assert!(err.contains("the CA key file is a symbolic link"), "{err}");
    }

    #[test]
    fn refuses_a_world_readable_key() {
        let base = tempfile::tempdir().unwrap();
        LocalAuthority::open_or_create(base.path(), "cluster.local").unwrap();
        let key = base.path().join("ca.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = LocalAuthority::open_or_create(base.path(), "cluster.local").unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&key.display().to_string()), "{message}");
        assert!(
            message.contains("the CA key file has mode 0644: group or others may read"),
            "{message}"
        );
        assert!(
            message.contains(&format!("chmod 600 {}", key.display())),
            "{message}"
        );
    }

    #[test]
    fn refuses_a_root_of_another_trust_domain() {
        let base = tempfile::tempdir().unwrap();
        LocalAuthority::open_or_create(base.path(), "cluster.local").unwrap();
        let err = LocalAuthority::open_or_create(base.path(), "example.org").unwrap_err();
        assert!(
            matches!(&err, IdentityError::TrustDomainMismatch { found, wanted, .. }
                if found == "cluster.local" && wanted == "example.org"),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_certificate_without_its_key() {
        let base = tempfile::tempdir().unwrap();
        LocalAuthority::open_or_create(base.path(), "cluster.local").unwrap();
        fs::remove_file(base.path().join("ca.key")).unwrap();
        let err = LocalAuthority::open_or_create(base.path(), "cluster.local").unwrap_err();
        assert!(
            err.to_string().contains("its key `ca.key` is missing"),
            "{err}"
        );
    }
}
