//! Parsers for the value types shared by both sections. Each takes the trimmed,
//! non-empty text of one setting and returns either the value or a sentence
//! saying what is allowed; the caller adds section, key and value to it.

use std::net::IpAddr;
use std::time::Duration;

/// Values are capped well below overflow; a limit this large is a typo anyway.
pub(crate) fn integer(text: &str, min: u64, max: u64, what: &str) -> Result<u64, String> {
    let reason = || format!("expected {what} {min}-{max}");
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(reason());
    }
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(reason()),
    }
}

/// Like [`integer`], for settings stored as `usize`.
pub(crate) fn count(text: &str, min: usize, max: usize, what: &str) -> Result<usize, String> {
    // usize fits in u64 on every platform we build for; saturate rather than assume.
    let n = integer(
        text,
        min as u64,
        u64::try_from(max).unwrap_or(u64::MAX),
        what,
    )?;
    usize::try_from(n).map_err(|_| format!("expected {what} {min}-{max}"))
}

/// A listening port; 0 asks the kernel for a free one (what tests use).
pub(crate) fn port(text: &str) -> Result<u16, String> {
    integer(text, 0, u16::MAX.into(), "a port number")
        .map(|p| p as u16)
        .map_err(|e| e + " (0 picks a free port)")
}

/// The port of a listener that is off by default (`tls_port`,
/// `memcached_port`): 0 turns it off.
pub(crate) fn port_or_off(text: &str) -> Result<u16, String> {
    integer(text, 0, u16::MAX.into(), "a port number")
        .map(|p| p as u16)
        .map_err(|e| e + " (0 turns it off)")
}

/// An interface address; `[::1]` is accepted too since that is how IPv6
/// addresses are usually written next to ports.
pub(crate) fn address(text: &str) -> Result<IpAddr, String> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse().map_err(|_| {
        "expected an IP address such as 0.0.0.0, 127.0.0.1, :: or ::1 (not a host name)".into()
    })
}

/// On/off switches, in the spellings people actually write in INI files.
pub(crate) fn boolean(text: &str) -> Result<bool, String> {
    const TRUE: [&str; 4] = ["true", "yes", "on", "1"];
    const FALSE: [&str; 4] = ["false", "no", "off", "0"];
    if TRUE.iter().any(|t| t.eq_ignore_ascii_case(text)) {
        Ok(true)
    } else if FALSE.iter().any(|f| f.eq_ignore_ascii_case(text)) {
        Ok(false)
    } else {
        Err("expected true or false (also yes/no, on/off, 1/0)".into())
    }
}

/// [`seconds`] greater than 0 (a timeout of 0 would close every connection,
/// cut every client off at a stop, or ping continuously).
pub(crate) fn positive_seconds(text: &str) -> Result<Duration, String> {
    let reason = || "expected a number of seconds greater than 0, at most 86400, such as 5 or 0.5";
    match seconds(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(reason().into()),
    }
}

/// Seconds as a decimal number, so sub-second timeouts (tests) are possible.
pub(crate) fn seconds(text: &str) -> Result<Duration, String> {
    const MAX: f64 = 86_400.0;
    let reason = || format!("expected a number of seconds 0-{MAX}, such as 5 or 0.5");
    // f64's parser also takes "inf", "NaN" and "1e3"; only plain decimals are meant.
    if !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(reason());
    }
    match text.parse::<f64>() {
        Ok(s) if (0.0..=MAX).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(reason()),
    }
}

/// A comma-separated list: entries trimmed, empty entries dropped (so a
/// trailing comma is harmless).
pub(crate) fn list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Whether `text` names a node: non-empty printable ASCII without spaces or
/// ':' (it is sent as `<node_name>:<port>`, so a ':' would make that ambiguous).
pub(crate) fn is_node_name(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// A node name as [`is_node_name`] defines it.
pub(crate) fn node_name(text: &str) -> Result<String, String> {
    if is_node_name(text) {
        Ok(text.to_owned())
    } else {
        Err("expected a name of printable ASCII characters without spaces or ':'".into())
    }
}

/// Splits `host:port` or `[v6]:port`; `None` when there is no port part.
/// A bare IPv6 address (`::1`) has no port.
fn split_host_port(text: &str) -> Option<(&str, &str)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return Some((host, after.strip_prefix(':')?));
    }
    let (host, port) = text.rsplit_once(':')?;
    (!host.contains(':')).then_some((host, port))
}

/// Host names and addresses contain no whitespace, commas or brackets.
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'[' | b']' | b'/'))
}

/// One cluster peer: `host:port` with a port 1-65535 (a peer is dialled, so 0
/// makes no sense), or `[v6]:port`.
pub(crate) fn host_port(entry: &str) -> Result<(), String> {
    let ok = split_host_port(entry)
        .is_some_and(|(host, port)| is_host(host) && integer(port, 1, u16::MAX.into(), "").is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "entry \"{entry}\" is not host:port (expected comma-separated host:port \
             with a port 1-65535, e.g. mq1:6747, 10.0.0.2:6747, [::1]:6747)"
        ))
    }
}

/// A host allowed to attach: a host, or host:port with a port 1-65535.
pub(crate) fn host_maybe_port(entry: &str) -> Result<(), String> {
    let ok = match split_host_port(entry) {
        Some((host, port)) => is_host(host) && integer(port, 1, u16::MAX.into(), "").is_ok(),
        None => is_host(entry.trim_start_matches('[').trim_end_matches(']')),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "entry \"{entry}\" is not a host (expected comma-separated hosts or host:port, \
             e.g. mq4, 10.0.0.5, mq4:6747)"
        ))
    }
}

/// Parses every entry of a list with `check`, keeping the trimmed entries.
pub(crate) fn checked_list(
    text: &str,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<Vec<String>, String> {
    list(text)
        .map(|entry| check(entry).map(|()| entry.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(port("0"), Ok(0));
        assert_eq!(port("65535"), Ok(65535));
        assert!(port("65536").is_err());
        assert!(port("-1").is_err());
        assert!(port("+80").is_err());
        assert!(port("80 ").is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(address("0.0.0.0"), Ok([0, 0, 0, 0].into()));
        assert_eq!(address("::1"), Ok(std::net::Ipv6Addr::LOCALHOST.into()));
        assert_eq!(address("[::1]"), Ok(std::net::Ipv6Addr::LOCALHOST.into()));
        assert!(address("localhost").is_err());
    }

    #[test]
    fn booleans() {
        assert_eq!(boolean("TRUE"), Ok(true));
        assert_eq!(boolean("off"), Ok(false));
        assert!(boolean("maybe").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(seconds("5"), Ok(Duration::from_secs(5)));
        assert_eq!(seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
        for bad in ["-1", "inf", "NaN", "1e3", "5s", "86401", "."] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_ports() {
        for good in ["mq1:6747", "10.0.0.1:1", "[::1]:65535", "a.b-c:80"] {
            assert_eq!(host_port(good), Ok(()), "{good}");
        }
        for bad in [
            "mq1",
            "mq1:0",
            "mq1:65536",
            ":80",
            "::1:80",
            "[::1]",
            "a b:80",
            "h:x",
        ] {
            assert!(host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replicant_hosts() {
        for good in ["mq4", "10.0.0.5", "mq4:6747", "::1", "[::1]", "[::1]:80"] {
            assert_eq!(host_maybe_port(good), Ok(()), "{good}");
        }
        for bad in ["mq4:0", "mq4:x", "a b", "[::1]:0"] {
            assert!(host_maybe_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_trim_and_drop_empty_entries() {
        assert_eq!(list(" a , b,,c , ").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(list("").count(), 0);
    }

    #[test]
    fn node_names() {
        assert!(is_node_name("mq-1.example"));
        for bad in ["", "a b", "a:b", "é", "a\tb"] {
            assert!(!is_node_name(bad), "{bad:?}");
        }
    }
}
