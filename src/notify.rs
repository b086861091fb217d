//! Readiness and stop notices to systemd (`Type=notify`), by the
//! `sd_notify(3)` protocol: one datagram to the unix socket named in
//! `$NOTIFY_SOCKET`.
//!
//! Hand-rolled rather than the `sd-notify` crate: the protocol is one
//! `sendto` of `KEY=VALUE` lines (abstract socket names start with `@`), which
//! the standard library does in a few lines, and a dependency would add
//! nothing but a supply-chain entry. Without `$NOTIFY_SOCKET` (not started by
//! systemd) every call is a no-op.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// Environment variable systemd sets for `Type=notify` services.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tells systemd the service is ready (every shard listens), with a status
/// line for `systemctl status`.
pub fn ready(status: &str) {
    send_logged(&format!(
        "READY=1\nSTATUS={status}\nMAINPID={}",
        std::process::id()
    ));
}

/// Tells systemd a graceful stop has begun.
pub fn stopping() {
    send_logged("STOPPING=1\nSTATUS=stopping: draining and saying BYE to clients");
}

fn send_logged(state: &str) {
    if let Err(e) = send(state) {
        tracing::warn!(cause = %e, state, "cannot notify systemd");
    }
}

/// Sends `state` to `$NOTIFY_SOCKET`; `Ok(false)` when the variable is unset.
fn send(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os(NOTIFY_SOCKET) else {
        return Ok(false);
    };
    send_to(&path, state)?;
    Ok(true)
}

fn send_to(path: &OsString, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    let sent = match bytes.split_first() {
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?
        }
        Some(_) => socket.send_to(state.as_bytes(), path)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is empty",
            ))
        }
    };
    if sent != state.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short datagram"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram_to_path_and_abstract_sockets() {
        let dir = std::env::temp_dir().join(format!("coremq-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).expect("bind");
        send_to(&path.clone().into_os_string(), "READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("coremq-notify-test-{}", std::process::id());
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        send_to(&OsString::from(format!("@{name}")), "STOPPING=1").expect("send");
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
