//! Credentials from the command line (or $COREMQ_USER, $COREMQ_PASSWORD,
//! $COREMQ_TOKEN) into the client's config, asking for a missing password
//! without echo. The client then authenticates on every connection before
//! anything else is sent.

use crate::args::Args;
use crate::exit::{Failure, USAGE};
use coremq_client::ClientConfig;
use std::io::IsTerminal;

/// `config` with the credentials the arguments give, if any.
pub fn configure(args: &Args, config: ClientConfig) -> Result<ClientConfig, Failure> {
    let given = (
        args.user.as_deref(),
        args.password.as_deref(),
        args.token.as_deref(),
    );
    match given {
        (None, None, None) => Ok(config),
        // Empty: an unset variable in a script, not a token to send.
        (None, None, Some("")) => Err(Failure::new(USAGE, "--token (or $COREMQ_TOKEN) is empty")),
        (None, None, Some(token)) => Ok(config.token(token)),
        (_, _, Some(_)) => Err(Failure::new(
            USAGE,
            "give either --token or --user/--password, not both \
             (they may come from $COREMQ_TOKEN, $COREMQ_USER, $COREMQ_PASSWORD)",
        )),
        (None, Some(_), None) => Err(Failure::new(
            USAGE,
            "--password (or $COREMQ_PASSWORD) needs --user (or $COREMQ_USER)",
        )),
        (Some(user), Some(password), None) => Ok(config.credentials(user, password)),
        (Some(user), None, None) => Ok(config.credentials(user, prompt(user)?)),
    }
}

/// Asks for `user`'s password on the terminal. Without a terminal there is
/// nobody to ask, and waiting on a pipe would hang a script.
fn prompt(user: &str) -> Result<String, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            USAGE,
            "--user needs --password or $COREMQ_PASSWORD when standard input is not a terminal",
        ));
    }
    rpassword::prompt_password(format!("Password for {user}: "))
        .map_err(|e| Failure::new(USAGE, format!("cannot read the password: {e}")))
}
