//! Guest text is data: everything a plugin says (failure reasons, findings,
//! its printed output) is escaped before a terminal, a Markdown file or an
//! XML/HTML document shows it, so it can never draw a line of its own
//! (`\n`), move the cursor or recolour the screen (ESC), or reorder what
//! follows it (Unicode bidirectional controls).

/// Whether `c` could change how the text around it is shown.
pub fn is_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// One line, safe for a terminal: `\n`, `\r`, `\t` and `\x1b`-style escapes
/// for every control character.
pub fn terminal(s: &str) -> String {
    if !s.chars().any(is_control) {
        return s.to_string();
    }
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if is_control(c) && (c as u32) < 0x100 => o.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_control(c) => o.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

/// Safe inside Markdown text or a table cell: escaped for the terminal
/// (one line), and Markdown's own characters backslash-escaped.
pub fn markdown(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in terminal(s).chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#' | '!' | '~' | '&'
        ) {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// Safe inside XML or HTML text and attribute values.
pub fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in terminal(s).chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_forged_outcome_line_stays_on_its_line() {
        let forged = "disk full\n\noutcome: healthy (exit 0)\x1b[2K\x1b[1A\u{202e}";
        assert_eq!(
            terminal(forged),
            "disk full\\n\\noutcome: healthy (exit 0)\\x1b[2K\\x1b[1A\\u{202e}"
        );
        assert_eq!(terminal("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(markdown("a|b *c*"), "a\\|b \\*c\\*");
        assert_eq!(
            xml("<a href='x'>&\x07"),
            "&lt;a href=&#39;x&#39;&gt;&amp;\\x07"
        );
    }

    proptest! {
        #[test]
        fn escaped_text_has_no_control_character(s in any::<String>()) {
            prop_assert!(!terminal(&s).chars().any(is_control));
            prop_assert!(!markdown(&s).chars().any(is_control));
            let x = xml(&s);
            prop_assert!(!x.chars().any(is_control));
            prop_assert!(!x.contains('<') && !x.contains('>'));
        }
    }
}
