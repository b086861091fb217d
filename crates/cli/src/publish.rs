//! `pub` and `send`: one publish, waiting for the OK. A connection id is a
//! queue like any other, so point-to-point is the same request.

use crate::exit::Failure;
use coremq_client::Client;
use serde_json::{Map, Value};

/// Publishes `message` to `queue`; prints nothing on success.
pub fn run(
    client: &Client,
    queue: &str,
    message: Option<Map<String, Value>>,
) -> Result<(), Failure> {
    let message = message.unwrap_or_default();
    client.publish(queue, &message)?;
    Ok(())
}
