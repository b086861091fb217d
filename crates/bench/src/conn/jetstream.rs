//! NATS JetStream set-up for `coremq-bench --jetstream`: the stream that
//! stores a throughput run's messages, made, read and removed through the
//! JetStream API (`$JS.API.STREAM.*` requests: a `PUB` with a reply inbox,
//! a JSON reply on it), on a connection of its own, outside the measured
//! window.
//!
//! One stream name, [`STREAM`], serves every run: a run deletes it (whatever
//! an earlier, perhaps interrupted run left) and creates it on its own
//! subjects, and deletes it again when done, so that a broker's disk holds at
//! most one run's messages. Two runs at once against one nats-server would
//! therefore take each other's stream away: `bench/compare` runs one at a time.

use super::handshake;
use super::Target;
use crate::error::BenchError;
use crate::wire::{nats, Frame};
use std::sync::atomic::{AtomicU64, Ordering};

/// The stream a `--jetstream` run stores its messages in.
pub const STREAM: &str = "COREMQ_BENCH";

/// A reply subject unique to this process and call.
pub fn inbox() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "_INBOX.coremq_bench.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A connection for API requests, with its inbox subscribed.
struct Api {
    fs: super::stream::FrameStream,
    inbox: String,
    addr: String,
}

impl Api {
    fn open(t: &Target) -> Result<Api, BenchError> {
        let inbox = inbox();
        let fs = handshake::open(t, 64 << 10)?;
        let fs = handshake::subscribe(fs, std::slice::from_ref(&inbox))?;
        Ok(Api {
            fs,
            inbox,
            addr: t.addr.clone(),
        })
    }

    /// One request and its reply's payload (JSON).
    fn request(&mut self, subject: &str, body: &str) -> Result<Vec<u8>, BenchError> {
        let mut b = Vec::new();
        nats::encode_publish_reply(&mut b, subject, &self.inbox, body.as_bytes());
        self.fs.send(&b, subject)?;
        let mut reply = Vec::new();
        self.fs
            .expect(subject, |f| match f {
                Frame::Msg(d) => {
                    reply = d.to_vec();
                    true
                }
                _ => false,
            })
            .map_err(|e| match e {
                BenchError::Timeout(what) => BenchError::Timeout(format!(
                    "{what}: no JetStream API reply from nats-server at {} — is JetStream \
                     enabled (nats-server -js)?",
                    self.addr
                )),
                e => e,
            })?;
        Ok(reply)
    }
}

fn refused(what: &str, reply: &[u8]) -> BenchError {
    BenchError::Handshake {
        context: what.into(),
        reply: crate::error::preview(reply),
    }
}

/// Delete [`STREAM`] if there is one, then create it with file storage on
/// `subjects`; an error if the server refuses the creation.
pub fn create_stream(t: &Target, subjects: &[String]) -> Result<(), BenchError> {
    let mut api = Api::open(t)?;
    // "stream not found" is an answer too: there was nothing to delete.
    api.request(&format!("$JS.API.STREAM.DELETE.{STREAM}"), "")?;
    let reply = api.request(
        &format!("$JS.API.STREAM.CREATE.{STREAM}"),
        &nats::stream_config(STREAM, subjects),
    )?;
    if nats::is_js_error(&reply) {
        return Err(refused("JetStream stream create", &reply));
    }
    Ok(())
}

/// How many messages [`STREAM`] holds (`$JS.API.STREAM.INFO`: `state.messages`).
pub fn stream_messages(t: &Target) -> Result<u64, BenchError> {
    let mut api = Api::open(t)?;
    let reply = api.request(&format!("$JS.API.STREAM.INFO.{STREAM}"), "")?;
    if nats::is_js_error(&reply) {
        return Err(refused("JetStream stream info", &reply));
    }
    let v: serde_json::Value = serde_json::from_slice(&reply)
        .map_err(|e| BenchError::Malformed(format!("JetStream stream info: {e}")))?;
    v["state"]["messages"].as_u64().ok_or_else(|| {
        BenchError::Malformed(format!(
            "JetStream stream info without state.messages: {}",
            crate::error::preview(&reply)
        ))
    })
}

/// Delete [`STREAM`] (its files go with it).
pub fn delete_stream(t: &Target) -> Result<(), BenchError> {
    let mut api = Api::open(t)?;
    let reply = api.request(&format!("$JS.API.STREAM.DELETE.{STREAM}"), "")?;
    if nats::is_js_error(&reply) {
        return Err(refused("JetStream stream delete", &reply));
    }
    Ok(())
}
