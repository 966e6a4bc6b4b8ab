//! Object keys a plugin may name.
//!
//! A plugin's key is joined to its alias's prefix. S3 itself treats keys as
//! opaque strings, but every layer that maps them to paths (the local
//! backend, proxies, tools that download a bucket) normalises them, so we
//! refuse anything that could be read as leaving the prefix: `.` and `..`
//! segments, a leading `/`, empty segments, backslashes, percent-encoded
//! bytes, control and invisible characters, and Unicode that normalises to
//! something else (a fullwidth `／` or `．`) or imitates a separator.

use unicode_normalization::UnicodeNormalization;

pub const MAX_KEY_BYTES: usize = 1024;

/// Characters that look like `/`, `\` or `.` to a person or a lax normaliser.
const LOOKALIKES: &[char] = &[
    '\u{2215}', // division slash
    '\u{2044}', // fraction slash
    '\u{29F8}', // big solidus
    '\u{FF0F}', // fullwidth solidus
    '\u{FE68}', // small reverse solidus
    '\u{FF3C}', // fullwidth reverse solidus
    '\u{2216}', // set minus
    '\u{29F5}', // reverse solidus operator
    '\u{FF0E}', // fullwidth full stop
    '\u{2024}', // one dot leader
    '\u{3002}', // ideographic full stop
    '\u{FE52}', // small full stop
];

/// Whether `c` imitates `/`, `\` or `.` (shared with the HTTP path check).
pub fn is_lookalike(c: char) -> bool {
    LOOKALIKES.contains(&c)
}

/// Control and invisible characters (shared with the HTTP path check).
pub fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}'                 // soft hyphen
            | '\u{200B}'..='\u{200F}'  // zero-width and direction marks
            | '\u{202A}'..='\u{202E}'  // bidi embedding
            | '\u{2060}'..='\u{2064}'  // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}'  // bidi isolates
            | '\u{FEFF}'               // byte order mark
            | '\u{FFF9}'..='\u{FFFB}'  // interlinear annotation
        )
}

/// Checks a key (or a list prefix, which may end with `/`).
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the key is {} bytes, over {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    if key.starts_with('/') {
        return Err(format!(
            "{key:?} is absolute: keys are relative to the alias's prefix"
        ));
    }
    if key.contains('\\') {
        return Err(format!("{key:?} contains a backslash"));
    }
    if let Some(c) = key.chars().find(|c| invisible(*c)) {
        return Err(format!(
            "{key:?} contains the control or invisible character U+{:04X}",
            c as u32
        ));
    }
    if let Some(c) = key.chars().find(|c| is_lookalike(*c)) {
        return Err(format!(
            "{key:?} contains U+{:04X}, which imitates a path separator or dot",
            c as u32
        ));
    }
    let bytes = key.as_bytes();
    if bytes
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
    {
        return Err(format!(
            "{key:?} contains percent-encoding: send the key unencoded"
        ));
    }
    if key.nfkc().ne(key.chars()) {
        return Err(format!(
            "{key:?} is not in Unicode normal form NFKC (it would read as {:?})",
            key.nfkc().collect::<String>()
        ));
    }
    let trimmed = key.strip_suffix('/').unwrap_or(key);
    for segment in trimmed.split('/') {
        match segment {
            "" => return Err(format!("{key:?} has an empty path segment")),
            "." | ".." => return Err(format!("{key:?} has a {segment:?} segment")),
            _ => {}
        }
    }
    Ok(())
}

/// Joins an alias prefix and a validated plugin key.
pub fn full_key(prefix: &str, key: &str) -> Result<String, String> {
    validate_key(key)?;
    Ok(format!("{prefix}{key}"))
}

/// Joins an alias prefix and a listing prefix (which may be empty).
pub fn full_prefix(prefix: &str, sub: &str) -> Result<String, String> {
    if sub.is_empty() {
        return Ok(prefix.to_string());
    }
    validate_key(sub)?;
    Ok(format!("{prefix}{sub}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_keys_pass() {
        for k in [
            "a.txt",
            "dir/file.bin",
            "2026/11/27/db-full.sql.zst.age",
            "café/menu",
            "a..b",
            ".hidden",
        ] {
            assert!(validate_key(k).is_ok(), "{k}");
        }
    }

    #[test]
    fn escapes_are_refused() {
        for k in [
            "../etc/passwd",
            "a/../../b",
            "./a",
            "a/./b",
            "/etc/passwd",
            "a//b",
            "a\\..\\b",
            "%2e%2e/secret",
            "a%2Fb",
            "..%2f",
            "\u{FF0E}\u{FF0E}/x",   // fullwidth dots
            "a\u{FF0F}..",          // fullwidth slash
            "a\u{2215}..\u{2215}b", // division slash
            "a\u{0000}b",
            "a\nb",
            "a\u{202E}b",
            "e\u{0301}", // decomposed é: not NFKC
            "",
        ] {
            assert!(validate_key(k).is_err(), "{k:?} must be refused");
        }
    }

    #[test]
    fn prefixes_join_without_escaping() {
        assert_eq!(full_key("mysql/", "a.sql").unwrap(), "mysql/a.sql");
        assert!(full_key("mysql/", "../pg/a.sql").is_err());
        assert_eq!(full_prefix("mysql/", "").unwrap(), "mysql/");
        assert_eq!(full_prefix("mysql/", "2026/").unwrap(), "mysql/2026/");
    }
}
