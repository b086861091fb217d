//! Whether a word in a settings file is a near miss of a known key: such a
//! word is a typo worth naming in an error; anything else may be a secret
//! pasted on a line of its own (a base64 secret's `=` padding even makes it
//! look like `key =`), and errors must not show it.

/// Whether `word` (compared without case) is one of `keys`, a part of one
/// (`origins` for `allowed_origins`), at most two edits from one, or named
/// as keys are (`frobnication_level`: lower-case letters, digits and
/// underscores, starting with a letter, with an underscore between words —
/// which no base64 or hex secret has).
pub fn near_a_key<'k>(word: &str, keys: impl IntoIterator<Item = &'k str>) -> bool {
    if word.is_empty() || word.len() > 40 {
        return false;
    }
    let named_like_a_key = word.starts_with(|c: char| c.is_ascii_lowercase())
        && word.contains('_')
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if named_like_a_key {
        return true;
    }
    let word = word.to_ascii_lowercase();
    keys.into_iter().any(|k| {
        let k = k.to_ascii_lowercase();
        let (w, k2): (Vec<char>, Vec<char>) = (word.chars().collect(), k.chars().collect());
        k.contains(&word) || edit_distance(&w, &k2) <= 2
    })
}

/// Levenshtein distance of two strings (as characters).
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [&str; 4] = ["port", "allowed_origins", "history_length", "password"];

    #[test]
    fn typos_and_parts_are_near_secrets_are_not() {
        for near in [
            "prot",
            "PORT",
            "frobnication_level",
            "origins",
            "histroy_length",
            "pasword",
            "passwd",
        ] {
            assert!(near_a_key(near, KEYS), "{near}");
        }
        for far in [
            "Hunter2Secret",
            "1/oiArm6AOe95d/srFEfsdanV/3+Zq0kP4x8wq7Yt",
            "correcthorsebatterystaple",
            "Correct_Horse",
            "admin",
            "",
        ] {
            assert!(!near_a_key(far, KEYS), "{far}");
        }
    }
}
