//! `history`: the recent messages of some queues, as JSON lines.

use crate::exit::Failure;
use crate::sub::Lines;
use coremq_client::Client;

/// Prints the history of `queues`, queue by queue, oldest first.
pub fn run(client: &Client, queues: &[String]) -> Result<(), Failure> {
    let mut out = Lines::stdout();
    for msg in client.history(queues)? {
        if !out.print(&msg) {
            break;
        }
    }
    Ok(())
}
