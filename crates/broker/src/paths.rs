//! Whether the paths a configuration names can be used, checked before a
//! start touches them (and by `--check-config`): a `data_dir` under a
//! read-only tree or a file is the configuration's fault, to be fixed, not
//! retried by the service manager.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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
}
