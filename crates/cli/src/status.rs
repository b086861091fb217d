//! `status`: the server's status object, pretty-printed.

use crate::exit::Failure;
use coremq_client::Client;

/// Prints the status object.
pub fn run(client: &Client) -> Result<(), Failure> {
    let status = client.status()?;
    let text = serde_json::to_string_pretty(&status).unwrap_or_else(|_| status.to_string());
    println!("{text}");
    Ok(())
}
