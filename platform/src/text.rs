//! Bounded text for messages, dead letters and logs.

/// The longest prefix of `s` of at most `max_bytes` bytes that ends on a character boundary.
pub fn prefix_within(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` cut to at most `max_bytes` bytes on a character boundary, with `…` when cut.
pub fn truncate_chars(s: &str, max_bytes: usize) -> String {
    let p = prefix_within(s, max_bytes);
    if p.len() == s.len() {
        s.to_string()
    } else {
        format!("{p}…")
    }
}

/// Text escaped for HTML content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_char_boundaries() {
        assert_eq!(prefix_within("abc", 5), "abc");
        assert_eq!(prefix_within("åäö", 3), "å");
        assert_eq!(prefix_within("åäö", 1), "");
        assert_eq!(truncate_chars("åäö", 4), "åä…");
        assert_eq!(truncate_chars("ab", 2), "ab");
    }
}
