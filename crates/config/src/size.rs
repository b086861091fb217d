//! Byte sizes such as `1M` or `16MiB`. Suffixes are binary (K = 1024) because
//! the limits they set are buffer sizes; `KB`/`MB` are refused rather than
//! guessed, since they usually mean powers of ten.

/// Parses `text` as a byte count with an optional K/M/G (or KiB/MiB/GiB)
/// suffix, case-insensitive, and checks it lies in `min..=max`.
pub(crate) fn parse(text: &str, min: usize, max: usize) -> Result<usize, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    let shift = match suffix.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(describe(min, max)),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| describe(min, max))
}

/// What a size setting accepts, with its bounds in the units people think in.
fn describe(min: usize, max: usize) -> String {
    format!(
        "expected a size in bytes from {} to {}, optionally with a K, M or G suffix \
         (binary: 1K = 1024; KiB, MiB, GiB also accepted)",
        human(min),
        human(max)
    )
}

/// `1073741824` as `1G`, `64` as `64`: the exact value in the largest unit that divides it.
pub(crate) fn human(n: usize) -> String {
    for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
        if n != 0 && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = usize::MAX;

    #[test]
    fn plain_bytes_and_suffixes() {
        assert_eq!(parse("64", 0, MAX), Ok(64));
        assert_eq!(parse("64B", 0, MAX), Ok(64));
        assert_eq!(parse("1k", 0, MAX), Ok(1024));
        assert_eq!(parse("1K", 0, MAX), Ok(1024));
        assert_eq!(parse("2KiB", 0, MAX), Ok(2048));
        assert_eq!(parse("1M", 0, MAX), Ok(1 << 20));
        assert_eq!(parse("16mib", 0, MAX), Ok(16 << 20));
        assert_eq!(parse("1 G", 0, MAX), Ok(1 << 30));
        assert_eq!(parse("1GiB", 0, MAX), Ok(1 << 30));
    }

    #[test]
    fn bad_sizes() {
        for bad in ["", "M", "1MB", "1.5M", "-1", "1T", "1 M B", "0x10", "1e6"] {
            assert!(parse(bad, 0, MAX).is_err(), "{bad:?}");
        }
        // Overflow is an error, not a wrap-around.
        assert!(parse("99999999999999999999", 0, MAX).is_err());
        assert!(parse("17179869184G", 0, MAX).is_err());
    }

    #[test]
    fn bounds() {
        assert!(parse("63", 64, 1 << 30).is_err());
        assert_eq!(parse("64", 64, 1 << 30), Ok(64));
        assert_eq!(parse("1G", 64, 1 << 30), Ok(1 << 30));
        let err = parse("1025M", 64, 1 << 30).unwrap_err();
        assert!(err.contains("from 64 to 1G"), "{err}");
    }

    #[test]
    fn human_units() {
        assert_eq!(human(64), "64");
        assert_eq!(human(1536), "1536");
        assert_eq!(human(2048), "2K");
        assert_eq!(human(16 << 20), "16M");
        assert_eq!(human(1 << 30), "1G");
        assert_eq!(human(0), "0");
    }
}
