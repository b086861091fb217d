//! Whether the paths a configuration names can be used, checked before a
//! start touches them (and by `--check-config`): a `data_dir` under a
//! read-only tree or a file is the configuration's fault, to be fixed, not
//! retried by the service manager.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What kind of thing a path must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory this process may create files in.
    Dir,
    /// A file this process may append to.
    File,
}

/// Whether this process can write `path` as `kind`: the path itself when it
/// exists, else the directory it would be created in — for a directory the
/// nearest one above it that exists (they are all created), for a file its
/// own (which must exist). Names the path and the reason.
pub fn check_writable(path: &Path, kind: Kind) -> Result<(), String> {
    let mut at = path;
    loop {
        match fs::metadata(at) {
            Ok(meta) => {
                let is_dir = meta.is_dir();
                if at == path {
                    match kind {
                        Kind::Dir if !is_dir => {
                            return Err(format!("{} is not a directory", at.display()))
                        }
                        Kind::File if is_dir => {
                            return Err(format!("{} is a directory", at.display()))
                        }
                        _ => {}
                    }
                } else if !is_dir {
                    return Err(format!(
                        "{} cannot be created: {} is not a directory",
                        path.display(),
                        at.display()
                    ));
                }
                let mode = if is_dir {
                    libc::W_OK | libc::X_OK
                } else {
                    libc::W_OK
                };
                return access(at, mode).map_err(|e| {
                    if at == path {
                        format!("{} is not writable: {e}", path.display())
                    } else {
                        format!(
                            "{} cannot be created in {}: {e}",
                            path.display(),
                            at.display()
                        )
                    }
                });
            }
            // Not there, or under a file (ENOTDIR): look further up.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                if kind == Kind::File && at != path {
                    return Err(format!("{}: {e}", at.display()));
                }
                at = match at.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    // A relative path: its first part is made in the working directory.
                    _ if at != Path::new(".") => Path::new("."),
                    _ => return Err(format!("{}: {e}", path.display())),
                };
            }
            Err(e) => return Err(format!("cannot use {}: {e}", at.display())),
        }
    }
}

/// What durable history already has in `dir` (a `data_dir` a node used):
/// its `LOCK`, `CURRENT` and `gen-*` trees, every directory and file of them
/// writable by this process, which a start appends to and rewrites — else a
/// start as another user than the one that made them (files of a root
/// start, then the service's user) fails on the first of them. Nothing else
/// in `dir` is the store's (a mount point's `lost+found`, an operator's
/// backup): not looked at. A missing `dir` is fine (it is made). At most
/// [`TREE_LIMIT`] entries are looked at, a few levels deep (the layout is
/// `data_dir/gen-N/shard-N/`).
pub fn check_tree_writable(dir: &Path) -> Result<(), String> {
    let mut todo = vec![(dir.to_path_buf(), 0)];
    let mut seen = 0;
    while let Some((d, depth)) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if depth == 0 && !(name == "LOCK" || name == "CURRENT" || name.starts_with("gen-")) {
                continue;
            }
            seen += 1;
            if seen > TREE_LIMIT {
                return Ok(());
            }
            let path = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                access(&path, libc::W_OK | libc::X_OK)
                    .map_err(|err| format!("{} is not writable: {err}", path.display()))?;
                if depth < 3 {
                    todo.push((path, depth + 1));
                }
            } else if kind.is_file() {
                access(&path, libc::W_OK)
                    .map_err(|err| format!("{} is not writable: {err}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Most entries of a `data_dir` [`check_tree_writable`] looks at.
const TREE_LIMIT: usize = 100_000;

/// access(2): the kernel's answer for this process's credentials, read-only
/// mounts included (EROFS).
fn access(path: &Path, mode: libc::c_int) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    // SAFETY: a valid NUL-terminated string; access reads no other memory.
    if unsafe { libc::access(c.as_ptr(), mode) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The files of `mq` that hold secrets and that other users of this machine
/// may read or change, each with what to do about it: said at start (WARN)
/// and by `--check-config`, not refused (in a container nobody else may be
/// there to read them). `config_file` is the file the configuration came
/// from, which holds `cluster_secret` when it sets it. Reading by the group
/// is not flagged: a group of key readers (Debian's `ssl-cert`) is the
/// operator's choice. Names and modes only, never contents.
pub fn secret_file_warnings(
    mq: &coremq_config::MqConfig,
    config_file: Option<&Path>,
) -> Vec<String> {
    let mut files: Vec<(&str, &Path, &str)> = Vec::new();
    if let Some(p) = &mq.tls.key_file {
        files.push(("tls_key_file", p, "the TLS private key"));
    }
    if let Some(p) = &mq.jwt_secret_file {
        files.push(("jwt_secret_file", p, "the token signing secret"));
    }
    if let Some(p) = &mq.users_file {
        files.push(("users_file", p, "password hashes"));
    }
    let sets_secret = |text: String| {
        text.lines().any(|l| {
            let l = l.trim_start().as_bytes();
            l.len() >= 14 && l[..14].eq_ignore_ascii_case(b"cluster_secret")
        })
    };
    if let Some(p) = config_file
        .filter(|p| mq.cluster_secret.is_some() && fs::read_to_string(p).is_ok_and(sets_secret))
    {
        files.push(("the configuration file", p, "cluster_secret"));
    }
    let mut said = Vec::new();
    for (name, path, what) in files {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = fs::metadata(path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        let can = match (mode & 0o004 != 0, mode & 0o022 != 0) {
            (false, false) => None,
            (true, false) => Some("read"),
            (false, true) => Some("change"),
            (true, true) => Some("read and change"),
        };
        if let Some(can) = can {
            said.push(format!(
                "{name} {} holds {what}, and other users of this machine can {can} it \
                 (mode {mode:04o}): chmod 600 it, or 640 with a group the broker runs in",
                path.display()
            ));
        }
        if let Some((dir, mode)) = open_directory_above(path) {
            said.push(format!(
                "{name} {} holds {what}, and other users of this machine can replace it: \
                 the directory {} (mode {mode:04o}) lets others than its owner create \
                 and remove files in it; chmod go-w it, or move the file",
                path.display(),
                dir.display()
            ));
        }
    }
    said
}

/// The first directory above `path` (as written, and as its links
/// resolve) that others than its owner may write to without the sticky
/// bit: whoever can, can put another file in the secret's place. A sticky
/// directory (`/tmp`) lets only a file's owner remove or rename it.
fn open_directory_above(path: &Path) -> Option<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let written = std::path::absolute(path).ok();
    let resolved = fs::canonicalize(path).ok();
    let mut seen = std::collections::HashSet::new();
    for p in written.iter().chain(resolved.iter()) {
        for dir in p.ancestors().skip(1) {
            if !seen.insert(dir.to_path_buf()) {
                continue;
            }
            let Ok(meta) = fs::metadata(dir) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                return Some((dir.to_path_buf(), mode & 0o1777));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_judged_by_what_exists() {
        let base = std::env::temp_dir().join(format!("coremq-paths-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let file = base.join("f");
        fs::write(&file, b"x").unwrap();
        assert_eq!(check_writable(&base, Kind::Dir), Ok(()));
        assert_eq!(check_writable(&base.join("a/b/c"), Kind::Dir), Ok(()));
        assert_eq!(check_writable(&base.join("new.log"), Kind::File), Ok(()));
        // A log file's directory is not created.
        let e = check_writable(&base.join("no/new.log"), Kind::File).unwrap_err();
        assert!(e.ends_with("No such file or directory (os error 2)"), "{e}");
        assert_eq!(check_writable(&file, Kind::File), Ok(()));
        let e = check_writable(&file, Kind::Dir).unwrap_err();
        assert!(e.ends_with("is not a directory"), "{e}");
        let e = check_writable(&file.join("x/y"), Kind::Dir).unwrap_err();
        assert!(
            e.contains("cannot be created") && e.contains("/f is not a directory"),
            "{e}"
        );
        let e = check_writable(&base, Kind::File).unwrap_err();
        assert!(e.ends_with("is a directory"), "{e}");
        assert_eq!(check_writable(Path::new("relative/x"), Kind::Dir), Ok(()));
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn secret_files_others_can_reach_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("coremq-secrets-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let (key, conf) = (base.join("key.pem"), base.join("coremq.conf"));
        fs::write(&key, b"not shown").unwrap();
        fs::write(
            &conf,
            "[CoreMQ]\n; the peers' secret\ncluster_secret = s3cret\n",
        )
        .unwrap();
        let mut mq = coremq_config::MqConfig::default();
        mq.tls.key_file = Some(key.clone());
        mq.cluster_secret = Some("s3cret".into());
        let mode =
            |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        let said = |mq: &coremq_config::MqConfig| secret_file_warnings(mq, Some(&conf));
        for (m, can) in [
            (0o644, "read"),
            (0o620, "change"),
            (0o666, "read and change"),
        ] {
            mode(&key, m);
            mode(&conf, 0o600);
            let w = said(&mq);
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(w[0].starts_with("tls_key_file "), "{w:?}");
            assert!(
                w[0].contains(&format!("can {can} it (mode {m:04o})")),
                "{w:?}"
            );
            assert!(!w[0].contains("not shown"), "{w:?}");
        }
        // Owner only, or a group that reads: nothing to say.
        for m in [0o600, 0o400, 0o640] {
            mode(&key, m);
            assert_eq!(said(&mq), Vec::<String>::new(), "mode {m:o}");
        }
        mode(&conf, 0o644);
        let w = said(&mq);
        assert!(
            w.len() == 1 && w[0].starts_with("the configuration file ") && !w[0].contains("s3cret"),
            "{w:?}"
        );
        // The key in any case (keys are case-insensitive).
        fs::write(&conf, "[coremq]\n  Cluster_Secret = s3cret\n").unwrap();
        assert_eq!(said(&mq).len(), 1, "{:?}", said(&mq));
        // A secret from the environment is not in the file.
        fs::write(&conf, "[CoreMQ]\nport = 1\n").unwrap();
        assert_eq!(said(&mq), Vec::<String>::new());
        // A directory above the file where others may put another file in
        // its place: named, as written and through a link; sticky is fine.
        let open = base.join("open");
        let inner = open.join("keys");
        fs::create_dir_all(&inner).unwrap();
        let key2 = inner.join("key.pem");
        fs::write(&key2, b"not shown").unwrap();
        mode(&key2, 0o600);
        mq.tls.key_file = Some(key2.clone());
        let replace = |mq: &coremq_config::MqConfig, dir: &Path, m: u32| {
            let w = said(mq);
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(
                w[0].starts_with("tls_key_file ")
                    && w[0].contains("can replace it")
                    && w[0].contains(&format!("directory {} (mode {m:04o})", dir.display()))
                    && !w[0].contains("not shown"),
                "{w:?}"
            );
        };
        for m in [0o777, 0o775] {
            mode(&open, m);
            replace(&mq, &open, m);
        }
        for m in [0o1777, 0o755, 0o750] {
            mode(&open, m);
            assert_eq!(said(&mq), Vec::<String>::new(), "mode {m:o}");
        }
        // Through a link from a closed directory into the open one.
        mode(&open, 0o777);
        let link = base.join("link");
        std::os::unix::fs::symlink(&inner, &link).unwrap();
        mq.tls.key_file = Some(link.join("key.pem"));
        replace(&mq, &open, 0o777);
        mode(&open, 0o755);
        assert_eq!(said(&mq), Vec::<String>::new());
        let _ = fs::remove_dir_all(&base);
    }
}
