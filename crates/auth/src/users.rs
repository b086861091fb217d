//! The users file: INI with a `[user:NAME]` section per user and an optional
//! `[anonymous]` one (PROTOCOL.md §8).
//!
//! Strict, like coremq.conf: an unknown section or key, a repeated one, a
//! line that is neither, a bad boolean or pattern are all errors naming the
//! line, because a typo in an access-control file that is silently skipped
//! grants or refuses rights nobody meant to. Sections and keys are matched
//! without regard to case; user names are case-sensitive. Nothing here
//! prints a value that could be a password.

use std::collections::HashMap;
use std::path::Path;

use argon2::password_hash::PasswordHash;

use crate::error::LoadError;
use crate::perms::check_pattern;

/// One section as written: patterns checked but `%u` not yet expanded.
#[derive(Clone, Default)]
pub(crate) struct Section {
    /// An Argon2id PHC string; `None`: the user logs in with tokens only.
    pub password: Option<String>,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub history: Vec<String>,
    pub kv_read: Vec<String>,
    pub kv_write: Vec<String>,
    pub deny: Vec<String>,
    pub direct: bool,
    pub monitor: bool,
}

/// The whole file.
#[derive(Default)]
pub(crate) struct UsersFile {
    pub anonymous: Option<Section>,
    /// In file order, so "the first user's hash" means something stable.
    pub users: Vec<(String, Section)>,
}

/// Which section a header names.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Name {
    Anonymous,
    User(String),
}

impl Name {
    /// As errors show it: lower case keyword, name as written.
    fn shown(&self) -> String {
        match self {
            Name::Anonymous => "anonymous".to_owned(),
            Name::User(name) => format!("user:{name}"),
        }
    }
}

/// The section being read.
struct Open {
    name: Name,
    section: Section,
    /// Keys set so far, with their lines, to refuse a second one.
    seen: HashMap<String, usize>,
}

const USER_KEYS: &str =
    "password, publish, subscribe, history, kv_read, kv_write, deny, direct or monitor";
const ANONYMOUS_KEYS: &str =
    "publish, subscribe, history, kv_read, kv_write, deny, direct or monitor";
/// Every key a section may have.
const KEYS: [&str; 9] = [
    "password",
    "publish",
    "subscribe",
    "history",
    "kv_read",
    "kv_write",
    "deny",
    "direct",
    "monitor",
];

const NOT_ARGON2ID: &str = "not an Argon2id hash ($argon2id$...); make one with coremq-cli passwd";

/// Parses the text of a users file; `path` only labels errors.
pub(crate) fn parse(text: &str, path: &Path) -> Result<UsersFile, LoadError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut file = UsersFile::default();
    let mut headers: HashMap<Name, usize> = HashMap::new();
    let mut open: Option<Open> = None;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let err = |section: Option<&Name>, key: Option<&str>, problem: String| {
            LoadError::users(
                path,
                line_no,
                section.map(Name::shown).as_deref(),
                key,
                problem,
            )
        };
        if let Some(header) = line.strip_prefix('[') {
            let name = parse_header(header)
                .map_err(|(shown, p)| LoadError::users(path, line_no, shown.as_deref(), None, p))?;
            if let Some(first) = headers.insert(name.clone(), line_no) {
                return Err(err(
                    Some(&name),
                    None,
                    format!("section appears twice (first at line {first}); merge the two"),
                ));
            }
            file.close(open.take());
            // Users may message connection ids unless told otherwise;
            // connections that never logged in may not unless allowed
            // (PROTOCOL.md §8 says default true for users; an [anonymous]
            // that only opens `subscribe = public.*` must not let strangers
            // message every connection).
            let direct = name != Name::Anonymous;
            open = Some(Open {
                name,
                section: Section {
                    direct,
                    ..Section::default()
                },
                seen: HashMap::new(),
            });
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            // Never echo the line: it may be `password: hunter2`.
            return Err(err(
                open.as_ref().map(|o| &o.name),
                None,
                "line is neither a [section], a key = value nor a # comment".to_owned(),
            ));
        };
        let key = key.trim().to_ascii_lowercase();
        // Errors name the key only when it is one or a near miss of one (a
        // typo): anything else may be a secret pasted on a line of its own
        // (a base64 secret's `=` padding makes it look like `key =`).
        let shown = coremq_config::near_a_key(&key, KEYS).then(|| key.clone());
        let Some(open) = open.as_mut() else {
            return Err(err(
                None,
                shown.as_deref(),
                "key outside any section (put it under [user:NAME] or [anonymous])".to_owned(),
            ));
        };
        let name = &open.name;
        if let Some(first) = open.seen.insert(key.clone(), line_no) {
            return Err(err(
                Some(name),
                shown.as_deref(),
                format!("set twice in this section (first at line {first})"),
            ));
        }
        let value = unquote(value.trim()).ok_or_else(|| {
            err(
                Some(name),
                shown.as_deref(),
                "unbalanced \" quote (quote the whole value or nothing)".to_owned(),
            )
        })?;
        set(&mut open.section, name, &key, value)
            .map_err(|p| err(Some(name), shown.as_deref(), p))?;
    }
    file.close(open);
    Ok(file)
}

impl UsersFile {
    fn close(&mut self, open: Option<Open>) {
        match open {
            Some(Open {
                name: Name::Anonymous,
                section,
                ..
            }) => self.anonymous = Some(section),
            Some(Open {
                name: Name::User(name),
                section,
                ..
            }) => self.users.push((name, section)),
            None => {}
        }
    }
}

/// Reads what follows `[`; an error carries the section to show, if any.
fn parse_header(header: &str) -> Result<Name, (Option<String>, String)> {
    let inner = header
        .strip_suffix(']')
        .ok_or((None, "a section header must end with ]".to_owned()))?
        .trim();
    if inner.eq_ignore_ascii_case("anonymous") {
        return Ok(Name::Anonymous);
    }
    match inner.split_once(':') {
        Some((kind, name)) if kind.trim().eq_ignore_ascii_case("user") => {
            let name = name.trim();
            if valid_user_name(name) {
                Ok(Name::User(name.to_owned()))
            } else {
                Err((
                    Some(format!("user:{name}")),
                    "a user name is 1-64 characters of A-Z a-z 0-9 . _ @ -".to_owned(),
                ))
            }
        }
        _ => Err((
            Some(inner.to_owned()),
            "unknown section (expected [user:NAME] or [anonymous])".to_owned(),
        )),
    }
}

/// 1-64 characters of `[A-Za-z0-9._@-]`: enough for e-mail-like names, and
/// nothing that means something in a pattern, so `%u` expands safely.
pub(crate) fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

/// The value without surrounding `"..."`; `None` for a quote on one side only.
fn unquote(value: &str) -> Option<&str> {
    match (value.starts_with('"'), value.ends_with('"')) {
        (true, true) if value.len() >= 2 => Some(&value[1..value.len() - 1]),
        (false, false) => Some(value),
        _ => None,
    }
}

/// Applies `key = value` to `section`; the error is the problem only.
fn set(section: &mut Section, name: &Name, key: &str, value: &str) -> Result<(), String> {
    let anonymous = *name == Name::Anonymous;
    match key {
        "password" if anonymous => Err(format!(
            "[anonymous] has no password (anonymous connections do not log in); expected {ANONYMOUS_KEYS}"
        )),
        "password" => {
            if !is_argon2id(value) {
                return Err(NOT_ARGON2ID.to_owned());
            }
            section.password = Some(value.to_owned());
            Ok(())
        }
        "publish" => list(value, anonymous).map(|l| section.publish = l),
        "subscribe" => list(value, anonymous).map(|l| section.subscribe = l),
        "history" => list(value, anonymous).map(|l| section.history = l),
        "kv_read" => list(value, anonymous).map(|l| section.kv_read = l),
        "kv_write" => list(value, anonymous).map(|l| section.kv_write = l),
        "deny" => list(value, anonymous).map(|l| section.deny = l),
        "direct" => boolean(value).map(|b| section.direct = b),
        "monitor" => boolean(value).map(|b| section.monitor = b),
        _ => Err(format!(
            "unknown key (expected {})",
            if anonymous { ANONYMOUS_KEYS } else { USER_KEYS }
        )),
    }
}

/// Whether `value` is an Argon2id PHC string that can be verified against:
/// with salt, hash and parameters Argon2 accepts. Checked here so that a bad
/// hash is a start-up error, not a user who can never log in.
fn is_argon2id(value: &str) -> bool {
    PasswordHash::new(value).is_ok_and(|h| {
        h.algorithm == argon2::ARGON2ID_IDENT
            && h.salt.is_some()
            && h.hash.is_some()
            && argon2::Params::try_from(&h).is_ok()
    })
}

/// Comma-separated patterns; an empty value is an empty list.
fn list(value: &str, anonymous: bool) -> Result<Vec<String>, String> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|item| {
            let item = item.trim();
            check_pattern(item)?;
            if anonymous && item.contains("%u") {
                return Err(format!(
                    "{item:?}: %u in [anonymous] (anonymous connections have no user name)"
                ));
            }
            Ok(item.to_owned())
        })
        .collect()
}

fn boolean(value: &str) -> Result<bool, String> {
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(format!("{value:?} is not true or false"))
    }
}

#[cfg(test)]
mod tests;
