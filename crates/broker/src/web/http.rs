//! The HTTP side of the WebSocket port: read one request head, parse it with
//! `httparse`, and write simple `Connection: close` responses.
//!
//! The status endpoints are for people and scrapers, not for throughput, so one
//! request per connection keeps this small and obviously bounded.

use crate::conn::io::Io;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use std::time::Duration;

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Most headers parsed.
const MAX_HEADERS: usize = 64;
/// How long a client may take to send its request head.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The parts of a request head the broker looks at. Not `Debug`: its
/// query and headers may carry credentials.
pub(crate) struct Head {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The minor version of `HTTP/1.x`: 0 or 1.
    pub minor_version: u8,
    /// Path without the query string.
    pub path: String,
    /// The query string (after `?`), which may carry a token: never logged.
    pub query: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Bytes read after the head (a WebSocket client may send a frame early).
    pub rest: Vec<u8>,
}

impl Head {
    /// The first header named `name` (lower-case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header contains `token` (case-insensitive),
    /// on any of its lines: several lines of one name are one list (RFC 9110
    /// §5.3; `Connection: keep-alive` then `Connection: Upgrade` is an
    /// upgrade).
    pub(crate) fn header_has(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Why a request head could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    /// The peer closed or the socket failed before a full head arrived.
    #[error("connection closed before the request head was complete")]
    Closed,
    /// The head is larger than [`MAX_HEAD`].
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    /// Not HTTP/1.x.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
}

/// Reads and parses one request head.
pub(crate) async fn read_head(stream: &mut Io) -> Result<Head, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let target = req.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let head = Head {
                    method: req.method.unwrap_or("").to_string(),
                    minor_version: req.version.unwrap_or(1),
                    path: path.to_string(),
                    query: query.to_string(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).trim().to_string(),
                            )
                        })
                        .collect(),
                    rest: buf[len..].to_vec(),
                };
                return Ok(head);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Malformed(e.to_string())),
        }
    }
}

/// Writes a complete response (`Cache-Control: no-store`) and flushes it.
pub(crate) async fn respond(
    stream: &mut Io,
    status: &str,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    respond_cached(
        stream,
        status,
        content_type,
        "no-store",
        extra_headers,
        body,
        head_only,
    )
    .await
}

/// [`respond`] with the given `Cache-Control`. `head_only` sends the
/// headers alone (for `HEAD` and `304 Not Modified`), with the length of
/// `body` as `Content-Length`.
pub(crate) async fn respond_cached(
    stream: &mut Io,
    status: &str,
    content_type: &str,
    cache_control: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: {cache_control}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra_headers {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes).await?;
    stream.flush().await
}

/// A plain-text error response.
pub(crate) async fn respond_text(stream: &mut Io, status: &str, text: &str) -> std::io::Result<()> {
    respond_text_to(stream, status, text, false).await
}

/// [`respond_text`], headers alone for a `HEAD` request (`head_only`): a
/// reply to `HEAD` has no content (RFC 9110 §9.3.2), whatever its status.
pub(crate) async fn respond_text_to(
    stream: &mut Io,
    status: &str,
    text: &str,
    head_only: bool,
) -> std::io::Result<()> {
    respond(
        stream,
        status,
        "text/plain; charset=utf-8",
        &[],
        format!("{text}\n").as_bytes(),
        head_only,
    )
    .await
}
