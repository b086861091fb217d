//! Exit codes and error messages: every failure is mapped here, once, so the
//! codes stay what the help text promises.

use coremq_client::ClientError;
use std::process::ExitCode;

/// The server refused the request.
pub const SERVER_ERROR: u8 = 1;
/// Bad command line or input (clap uses 2 for its own errors too).
pub const USAGE: u8 = 2;
/// Cannot connect, or the connection was lost.
pub const CONNECTION: u8 = 3;
/// No answer, or not enough messages, in time.
pub const TIMEOUT: u8 = 4;

/// Why the command failed: an exit code and a message for stderr.
#[derive(Debug)]
pub struct Failure {
    /// One of the codes above.
    pub code: u8,
    /// What went wrong, for a person.
    pub message: String,
}

impl Failure {
    /// A failure with this code and message.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// Prints the message and gives the exit code.
    pub fn report(self) -> ExitCode {
        eprintln!("coremq-cli: {}", self.message);
        ExitCode::from(self.code)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            // The server said no to the credentials: as for any refusal, its
            // reply is what the user needs to see.
            ClientError::Server(_)
            | ClientError::AuthenticationFailed(_)
            | ClientError::TokenExpired => SERVER_ERROR,
            ClientError::Timeout(_) => TIMEOUT,
            // No connection, or no welcome on it, within the timeout.
            ClientError::Connect { cause, .. } if cause.kind() == std::io::ErrorKind::TimedOut => {
                TIMEOUT
            }
            // An address that is not one (no port, a port out of range): the
            // command line's fault, not the network's.
            ClientError::Resolve { cause, .. }
                if cause.kind() == std::io::ErrorKind::InvalidInput =>
            {
                USAGE
            }
            ClientError::BadQueueName { .. }
            | ClientError::BadPosition { .. }
            | ClientError::NotAnObject(_)
            | ClientError::CommandKey(_)
            | ClientError::ReservedOption(_)
            | ClientError::Serialize(_)
            | ClientError::Tls(_) => USAGE,
            ClientError::Resolve { .. }
            | ClientError::Connect { .. }
            | ClientError::Refused(_)
            | ClientError::Disconnected
            | ClientError::NotConnected(_)
            | ClientError::Closed
            | ClientError::Protocol(_) => CONNECTION,
        };
        Failure::new(code, e.to_string())
    }
}
