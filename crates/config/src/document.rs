//! The INI layer: turns text into the raw string of every known key, and layers
//! the environment overrides on top. No value is interpreted here; this module
//! only guarantees that every line of the file was understood (known section,
//! known key, set once, no inline comment) and remembers where each value came
//! from for the error messages of the typed layer.
//!
//! The parse is done by the `config` crate, but `config` keeps only the last of
//! a repeated section and the last of a repeated key, so a setting could vanish
//! without a word. A pre-pass over the lines ([`prepare`]) therefore checks the
//! structure first — every line blank, a comment, a known `[section]` or a
//! known `key = value`, each key set once per section in any letter case, even
//! across repeated headers — and hands `config` a text in which every section
//! appears once under its canonical name, with canonical key names. `config`
//! then parses the values (whitespace, quotes) and we read them from its tables.
//!
//! Backslashes stay as written (a Windows log path must not lose them), while
//! `config`'s INI parser treats `\` as an escape (`\n`, `\t`, `\x41`, line
//! continuation). The pre-pass protects every backslash of a value so that the
//! parser gives it back unchanged; a trailing `\` is therefore a backslash, not
//! a line continuation.

use crate::nearmiss::near_a_key;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, Origin};

/// One section the file may contain, with the keys it accepts.
pub(crate) struct SectionSpec {
    /// Canonical name as written in coremq.conf (`CoreMQ`); matched case-insensitively.
    pub name: &'static str,
    /// Prefix of the override variables (`COREMQ` gives `COREMQ_PORT`).
    pub env_prefix: &'static str,
    /// Canonical (lower-case) key names; matched case-insensitively.
    pub keys: &'static [&'static str],
    /// Of `keys`, those whose values no error message may show (secrets).
    pub secret: &'static [&'static str],
}

/// What an error message shows of the value of `key` in `spec`.
fn shown(spec: &SectionSpec, key: &str, value: String) -> String {
    if spec.secret.contains(&key) {
        REDACTED.to_owned()
    } else {
        value
    }
}

/// What error messages show in place of a secret.
const REDACTED: &str = "<redacted>";

/// `line` as an error message may quote it: a line that starts with a
/// secret key's name (even with its `=` missing or its quote unclosed) shows
/// that name only.
fn shown_line<'l>(line: &'l str, specs: &[SectionSpec]) -> std::borrow::Cow<'l, str> {
    // A line that is no header and does not start with a near miss of a key
    // may be a secret on a line of its own (a value broken over two lines).
    let word = line
        .split(|c: char| c == '=' || c == ':' || c.is_whitespace())
        .next()
        .unwrap_or_default();
    if !line.starts_with('[') && !near_a_key(word, all_keys(specs)) {
        return NOT_SHOWN.into();
    }
    for name in specs.iter().flat_map(|s| s.secret) {
        // (`get`, not indexing: the line may hold a multi-byte character
        // where the name would end.)
        let starts = line
            .get(..name.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(name));
        let ends = line
            .get(name.len()..)
            .and_then(|rest| rest.chars().next())
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if starts && ends {
            return format!("{} {REDACTED}", &line[..name.len()]).into();
        }
    }
    line.into()
}

/// What an error shows instead of a line or key that may be a secret.
const NOT_SHOWN: &str = "(not shown: not like any key, and it may be a secret)";

/// Every key of every section.
fn all_keys(specs: &[SectionSpec]) -> impl Iterator<Item = &'static str> + '_ {
    specs.iter().flat_map(|s| s.keys.iter().copied())
}

/// `key` as an error may show it (see [`NOT_SHOWN`]).
fn shown_key(key: &str, specs: &[SectionSpec]) -> String {
    if near_a_key(key, all_keys(specs)) {
        key.to_owned()
    } else {
        NOT_SHOWN.to_owned()
    }
}

/// Looks an override variable up; `Err` when it is set but unusable.
pub(crate) type EnvLookup<'a> = dyn Fn(&str) -> Result<Option<String>, ConfigError> + 'a;

/// The file's settings, indexed like the specs: `values[section][key]`.
pub(crate) struct Document<'s> {
    specs: &'s [SectionSpec],
    file: Option<PathBuf>,
    values: Vec<Vec<Option<String>>>,
}

/// Sections and keys as `config` returns them: `tables["CoreMQ"]["port"]`.
type Tables = HashMap<String, HashMap<String, String>>;

impl<'s> Document<'s> {
    /// Parses and checks `text`. `file` only labels error messages.
    pub fn parse(
        text: &str,
        file: Option<&Path>,
        specs: &'s [SectionSpec],
    ) -> Result<Self, ConfigError> {
        let file_buf = file.map(Path::to_path_buf);
        let syntax = |message: String| ConfigError::Syntax {
            file: file_buf.clone(),
            message,
        };
        let prepared = prepare(text, file, specs)?;
        let tables: Tables = config::Config::builder()
            .add_source(config::File::from_str(
                &prepared.text,
                config::FileFormat::Ini,
            ))
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|err| syntax(err.to_string()))?;

        // The pre-pass and `config` must agree on every key; if they ever do
        // not, refusing the file beats guessing which of the two is right.
        let returned: usize = tables.values().map(HashMap::len).sum();
        if returned != prepared.keys.len() {
            return Err(syntax(format!(
                "{} settings found in the file, but {returned} came out of the INI parser",
                prepared.keys.len()
            )));
        }
        let mut values: Vec<Vec<Option<String>>> =
            specs.iter().map(|s| vec![None; s.keys.len()]).collect();
        // In file order, so the first offending line is the one reported.
        for &KeyLine {
            line,
            section,
            key,
            comment,
        } in &prepared.keys
        {
            let spec = &specs[section];
            let name = spec.keys[key];
            let Some(value) = tables.get(spec.name).and_then(|t| t.get(name)) else {
                return Err(syntax(format!(
                    "line {line}: the INI parser returned no value for [{}] {name}",
                    spec.name
                )));
            };
            if comment {
                return Err(ConfigError::InlineComment {
                    origin: Origin::File {
                        path: file_buf,
                        section: spec.name,
                        key: name,
                    },
                    value: shown(spec, name, value.clone()),
                });
            }
            values[section][key] = Some(value.clone());
        }
        Ok(Document {
            specs,
            file: file_buf,
            values,
        })
    }

    /// The view of section `spec` (one of the specs given to `parse`) with
    /// overrides from `env`.
    pub fn section<'d>(&'d self, spec: &'d SectionSpec, env: &'d EnvLookup<'d>) -> Section<'d> {
        let values = self
            .specs
            .iter()
            .position(|s| s.name == spec.name)
            .and_then(|i| self.values.get(i))
            .map_or(&[][..], Vec::as_slice);
        Section {
            spec,
            file: self.file.as_deref(),
            values,
            env,
        }
    }
}

/// A `key = value` line that the pre-pass accepted.
struct KeyLine {
    /// 1-based line number in the original text.
    line: usize,
    /// Index into the specs.
    section: usize,
    /// Index into that spec's keys.
    key: usize,
    /// A comment follows the value on its line (outside its quotes).
    comment: bool,
}

/// The text for `config` and the keys it must give back.
struct Prepared {
    /// Each section once, `[Canonical]` header, `canonical_key=value` lines.
    text: String,
    /// Every key set in the file, in file order.
    keys: Vec<KeyLine>,
}

/// The pre-pass. Each line must be blank, a `;`/`#` comment, a `[section]`
/// header or `key = value` (or `key: value`), indentation allowed; the section
/// and key must be known (case-insensitively), each key set at most once per
/// section — also across a repeated header, whose keys are merged — and a
/// quoted value must close its quote on its line. Checking line by line means
/// the error names the line at fault; `config`'s parser would take an indented
/// `; comment` as the start of a key, join a line without `=` to the next
/// line's key, and silently drop all but the last of a repeated section or key.
fn prepare(
    text: &str,
    file: Option<&Path>,
    specs: &[SectionSpec],
) -> Result<Prepared, ConfigError> {
    let file_buf = || file.map(Path::to_path_buf);
    let mut sections = vec![String::new(); specs.len()];
    let mut seen: Vec<Vec<bool>> = specs.iter().map(|s| vec![false; s.keys.len()]).collect();
    let mut keys = Vec::new();
    let mut current: Option<usize> = None;
    // Some Windows editors start UTF-8 files with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        let syntax = |complaint: &str| ConfigError::Syntax {
            file: file_buf(),
            message: format!(
                "line {number}: \"{}\": {complaint}",
                shown_line(line, specs)
            ),
        };
        if line.is_empty() || line.starts_with([';', '#']) {
            continue;
        }
        if line.contains('\r') {
            // The INI parser would end the line there and read on as a new one.
            return Err(syntax(
                "a carriage return inside a line (use \\n or \\r\\n line endings)",
            ));
        }
        if let Some(header) = line.strip_prefix('[') {
            let Some(name) = header.strip_suffix(']') else {
                return Err(syntax(
                    "a section header must be \"[name]\" alone on its line (comments on their own line)",
                ));
            };
            let name = name.trim();
            let Some(s) = specs.iter().position(|s| s.name.eq_ignore_ascii_case(name)) else {
                return Err(ConfigError::UnknownSection {
                    file: file_buf(),
                    section: name.to_owned(),
                    known: specs
                        .iter()
                        .map(|s| format!("[{}]", s.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            current = Some(s);
            continue;
        }
        // The INI parser ends a key at the first '=' or ':'.
        let Some((key, value)) = line.split_once(['=', ':']) else {
            return Err(syntax(
                "expected \"key = value\", a \"[section]\" header or a \"; comment\"",
            ));
        };
        let key = key.trim_end();
        if key.is_empty() {
            return Err(syntax("a key name must come before the '=' (or ':')"));
        }
        let Some(s) = current else {
            return Err(ConfigError::KeyOutsideSection {
                file: file_buf(),
                key: shown_key(key, specs),
            });
        };
        let spec = &specs[s];
        let Some(k) = spec.keys.iter().position(|k| k.eq_ignore_ascii_case(key)) else {
            return Err(ConfigError::UnknownKey {
                file: file_buf(),
                section: spec.name,
                key: shown_key(key, specs),
                known: spec.keys.join(", "),
            });
        };
        if std::mem::replace(&mut seen[s][k], true) {
            return Err(ConfigError::DuplicateKey {
                file: file_buf(),
                section: spec.name,
                key: spec.keys[k],
            });
        }
        if let Some(quote) = unclosed_quote(value) {
            return Err(syntax(&format!(
                "the value's opening {quote} has no closing {quote} on this line"
            )));
        }
        let out = &mut sections[s];
        out.push_str(spec.keys[k]);
        out.push('=');
        protect_backslashes(value, out);
        out.push('\n');
        keys.push(KeyLine {
            line: number,
            section: s,
            key: k,
            comment: comment_after(value),
        });
    }
    let mut out = String::with_capacity(text.len());
    for (spec, body) in specs.iter().zip(&sections) {
        if !body.is_empty() {
            out.push('[');
            out.push_str(spec.name);
            out.push_str("]\n");
            out.push_str(body);
        }
    }
    Ok(Prepared { text: out, keys })
}

/// The INI parser treats a value that starts with `"` or `'` (and a quote right
/// after a closing one) as quoted up to the matching quote, even across lines,
/// which would swallow the following settings; `\` skips the next character.
/// Returns the quote character that is left open on this line, if any.
fn unclosed_quote(value: &str) -> Option<char> {
    past_quotes(value).err()
}

/// What follows the quoted parts a value starts with (all of it when it
/// starts with none), or the quote left open.
fn past_quotes(value: &str) -> Result<&str, char> {
    let mut rest = value.trim_start();
    while let Some(quote) = rest.chars().next().filter(|c| matches!(c, '"' | '\'')) {
        let mut chars = rest.char_indices().skip(1);
        let mut close = None;
        while let Some((i, c)) = chars.next() {
            if c == '\\' {
                chars.next();
            } else if c == quote {
                close = Some(i);
                break;
            }
        }
        let Some(close) = close else {
            return Err(quote);
        };
        rest = &rest[close + 1..];
    }
    Ok(rest)
}

/// Whether a value as written in the file has a comment after it: `; x` or
/// `# x` after whitespace, or nothing but a comment — outside its quotes,
/// so that a quoted `"/var/log/a ;b.log"` is a value like any other.
fn comment_after(value: &str) -> bool {
    let t = value.trim_start();
    match past_quotes(t) {
        Ok(rest) if rest.len() < t.len() => has_inline_comment(&format!(" {rest}")),
        _ => has_inline_comment(t),
    }
}

/// Appends `value` so that the INI parser's escape processing gives back every
/// backslash as written: `\X` becomes `\\` (an escaped backslash) followed by
/// `X`, itself escaped (`\X` reads as `X`) unless it is one of the letters that
/// would start an escape sequence. Escaping `X` keeps a quote after a backslash
/// from closing a quoted value, as it did not before either.
fn protect_backslashes(value: &str, out: &mut String) {
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push_str("\\\\");
        match chars.next() {
            None => {}
            Some(c @ ('0' | 'a' | 'b' | 't' | 'r' | 'n' | 'x')) => out.push(c),
            Some(c) => {
                out.push('\\');
                out.push(c);
            }
        }
    }
}

/// `; x` or `# x` after whitespace, or a value that is nothing but a comment
/// (`key = ; x`, which the parser hands us as the value "; x").
fn has_inline_comment(value: &str) -> bool {
    value.starts_with([';', '#'])
        || value
            .as_bytes()
            .windows(2)
            .any(|w| w[0].is_ascii_whitespace() && (w[1] == b';' || w[1] == b'#'))
}

/// A value as given, before interpretation.
pub(crate) struct Raw {
    /// Trimmed text.
    pub text: String,
    /// Where it came from, for error messages.
    pub origin: Origin,
}

/// One section's settings, environment first, then the file.
pub(crate) struct Section<'d> {
    spec: &'d SectionSpec,
    file: Option<&'d Path>,
    values: &'d [Option<String>],
    env: &'d EnvLookup<'d>,
}

impl Section<'_> {
    /// The value of `key` if the environment or the file sets it (possibly to "").
    pub fn raw(&self, key: &'static str) -> Result<Option<Raw>, ConfigError> {
        let var = format!("{}_{}", self.spec.env_prefix, key.to_ascii_uppercase());
        let index = self.spec.keys.iter().position(|k| *k == key);
        debug_assert!(index.is_some(), "key {key} is not in [{}]", self.spec.name);
        let value = index.and_then(|i| self.values.get(i)?.as_ref());
        if let Some(text) = (self.env)(&var)? {
            let text = text.trim();
            // Empty means "the default"; over a value the file sets, that is
            // what `${VAR}` of an unset VAR gives, and silently turning off
            // (say) access control is worse than refusing to start.
            if text.is_empty() && value.is_some_and(|v| !v.is_empty()) {
                return Err(ConfigError::Invalid {
                    origin: Origin::Env { var },
                    value: String::new(),
                    reason: format!(
                        "an empty variable would replace {key} from the file with the default: \
                         unset it to keep the file's value, or give one"
                    ),
                });
            }
            return Ok(Some(Raw {
                text: text.to_owned(),
                origin: Origin::Env { var },
            }));
        }
        Ok(value.map(|text| Raw {
            text: text.clone(),
            origin: Origin::File {
                path: self.file.map(Path::to_path_buf),
                section: self.spec.name,
                key,
            },
        }))
    }

    /// `key` interpreted by `parse`, or `None` when unset or empty (empty means
    /// "the default"). A parse failure becomes an error naming origin and value.
    pub fn parse<T>(
        &self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.raw(key)? {
            Some(raw) if !raw.text.is_empty() => match parse(&raw.text) {
                Ok(value) => Ok(Some(value)),
                Err(reason) => Err(ConfigError::Invalid {
                    origin: raw.origin,
                    value: shown(self.spec, key, raw.text),
                    reason,
                }),
            },
            _ => Ok(None),
        }
    }

    /// Sets `*slot` from `key` if it is given and non-empty; keeps the default otherwise.
    pub fn set<T>(
        &self,
        slot: &mut T,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<(), ConfigError> {
        if let Some(value) = self.parse(key, parse)? {
            *slot = value;
        }
        Ok(())
    }

    /// `key` described for a message that involves two settings:
    /// `[CoreMQ] max_pending = "2M"`, or `max_pending = 16777216 (default)`.
    pub fn describe(
        &self,
        key: &'static str,
        value: impl std::fmt::Display,
    ) -> Result<String, ConfigError> {
        Ok(match self.raw(key)? {
            Some(raw) if !raw.text.is_empty() => format!("{} = \"{}\"", raw.origin, raw.text),
            _ => format!("[{}] {key} = {value} (default)", self.spec.name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: [SectionSpec; 2] = [
        SectionSpec {
            name: "CoreMQ",
            env_prefix: "COREMQ",
            keys: &["port", "shards", "secret"],
            secret: &["secret"],
        },
        SectionSpec {
            name: "CoreWS",
            env_prefix: "COREWS",
            keys: &["port"],
            secret: &[],
        },
    ];

    #[test]
    fn errors_never_show_a_secret_value() {
        let pw = "Tr0ub4dor&3";
        let env = |_: &str| Ok(None);
        for (text, says) in [
            // An inline comment (or a secret that looks like one).
            (format!("[CoreMQ]\nsecret = {pw} ;x\n"), "comments must be"),
            (format!("[CoreMQ]\nSECRET = {pw} #3\n"), "comments must be"),
            // An unclosed quote, a missing '=', a carriage return.
            (format!("[CoreMQ]\nsecret = \"{pw}\n"), "no closing"),
            (
                format!("[CoreMQ]\nsecret {pw}\n"),
                "expected \"key = value\"",
            ),
            (
                format!("[CoreMQ]\n  Secret\t{pw}\n"),
                "expected \"key = value\"",
            ),
            (
                format!("[CoreMQ]\nsecret = {pw}\rport = 1\n"),
                "carriage return",
            ),
        ] {
            let err = Document::parse(&text, None, &SPECS)
                .err()
                .unwrap_or_else(|| panic!("{text:?} parsed"))
                .to_string();
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(!err.contains("Tr0ub4dor"), "{text:?}: {err}");
            assert!(err.contains("<redacted>"), "{text:?}: {err}");
        }
        // A value that does not parse, named but not shown.
        let doc = Document::parse(&format!("[CoreMQ]\nsecret = {pw}\n"), None, &SPECS).unwrap();
        let err = doc
            .section(&SPECS[0], &env)
            .parse("secret", |_| Err::<(), _>("too short".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("secret") && err.contains("too short"), "{err}");
        assert!(!err.contains(pw), "{err}");
        // Other keys' values are still shown, and a key that only begins
        // like the secret's name is not taken for it.
        let err = Document::parse("[CoreMQ]\nport = 1 ; x\n", None, &SPECS)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("1 ; x"), "{err}");
        // A multi-byte character where the name would end is no panic.
        let err = Document::parse("[CoreMQ]\nsecre€t 3\n", None, &SPECS)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("secre€t 3"), "{err}");
        let err = Document::parse("[CoreMQ]\nsecretive 3\n", None, &SPECS)
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains(REDACTED) && err.contains("line 2"), "{err}");
        // A line like no key at all is not shown either: it may be a secret
        // on a line of its own.
        for line in [
            "Sup3rS3cretValue",
            "Sup3rS3cretValue==",
            "= Sup3rS3cretValue",
        ] {
            let err = Document::parse(&format!("[CoreMQ]\n{line}\n"), None, &SPECS)
                .err()
                .unwrap()
                .to_string();
            assert!(!err.contains("Sup3r"), "{line}: {err}");
            let err = Document::parse(&format!("{line}\n[CoreMQ]\n"), None, &SPECS)
                .err()
                .unwrap()
                .to_string();
            assert!(!err.contains("Sup3r"), "{line}: {err}");
        }
    }

    #[test]
    fn config_gets_each_section_once_with_canonical_names() {
        let text = "; c\n[coremq]\n  PORT: 1\n[COREWS]\nPort = \"2\"\n[CoreMQ]\nshards = C:\\x\\\n";
        let prepared = prepare(text, None, &SPECS).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            prepared.text,
            "[CoreMQ]\nport= 1\nshards= C:\\\\x\\\\\n[CoreWS]\nport= \"2\"\n"
        );
        let lines: Vec<_> = prepared
            .keys
            .iter()
            .map(|k| (k.line, k.section, k.key))
            .collect();
        assert_eq!(lines, [(3, 0, 0), (5, 1, 0), (7, 0, 1)]);
    }

    #[test]
    fn backslashes_are_protected_from_escape_processing() {
        let protect = |value: &str| {
            let mut out = String::new();
            protect_backslashes(value, &mut out);
            out
        };
        assert_eq!(protect(r"a\n"), r"a\\n");
        assert_eq!(protect(r"a\q"), r"a\\\q");
        assert_eq!(protect(r#"\""#), r#"\\\""#);
        assert_eq!(protect(r"\\"), r"\\\\");
        assert_eq!(protect("a\\"), r"a\\");
    }

    #[test]
    fn quotes_must_close_on_their_line() {
        assert_eq!(unclosed_quote(" plain \" text"), None);
        assert_eq!(unclosed_quote(" \"a b\""), None);
        assert_eq!(unclosed_quote("'a''b' c"), None);
        assert_eq!(unclosed_quote(" \"a"), Some('"'));
        assert_eq!(unclosed_quote("'a'\"b"), Some('"'));
        assert_eq!(unclosed_quote(r#""a\""#), Some('"'));
    }
}
