//! `passwd`: the Argon2id hash of a password, for a `password =` line of the
//! server's users file (the file never holds the password itself).
//!
//! The argon2 crate's defaults (Argon2id v19, 19 MiB, 2 passes, 1 lane) are
//! the OWASP-recommended minimum and what the broker verifies against; the
//! PHC string carries them, so the server needs no settings of its own.

use crate::exit::{Failure, USAGE};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use std::io::{BufRead, IsTerminal};

/// Reads the password (typed twice on a terminal, else one line of standard
/// input) and prints its hash.
pub fn run(force_stdin: bool) -> Result<(), Failure> {
    let password = if force_stdin || !std::io::stdin().is_terminal() {
        read_line()?
    } else {
        prompt_twice()?
    };
    if password.is_empty() {
        return Err(Failure::new(USAGE, "the password is empty"));
    }
    println!("{}", hash(&password)?);
    Ok(())
}

/// A PHC string `$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH` with a fresh salt.
pub fn hash(password: &str) -> Result<String, Failure> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Failure::new(USAGE, format!("cannot hash the password: {e}")))
}

/// One line of standard input without its line end; other whitespace is part
/// of the password.
fn read_line() -> Result<String, Failure> {
    let mut line = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::new(USAGE, format!("cannot read the password: {e}")))?;
    if read == 0 {
        return Err(Failure::new(USAGE, "no password on standard input"));
    }
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    Ok(line)
}

/// Asks twice without echo, so a typo does not lock the user out.
fn prompt_twice() -> Result<String, Failure> {
    let read = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map_err(|e| Failure::new(USAGE, format!("cannot read the password: {e}")))
    };
    let first = read("New password: ")?;
    let again = read("Repeat the password: ")?;
    if first != again {
        return Err(Failure::new(USAGE, "the passwords do not match"));
    }
    Ok(first)
}
