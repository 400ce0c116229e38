//! Glob patterns for allowlists (origins, extra groups): `*` stands for one
//! or more characters other than `:` and `/`, anything else for itself.
//!
//! Matching costs `pattern × text` at worst, never more, so a hostile input
//! cannot make it slow. It must not know what the patterns are for; callers
//! bound the length of what they match.

/// Whether `text` matches `pattern`. Dynamic programming over (pattern,
/// text) prefixes keeps the cost at `pattern × text` whatever the input
/// holds, where backtracking could be made exponential by a crafted value.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // row[j]: the pattern prefix so far matches text[..j].
    let mut row = vec![false; text.len() + 1];
    row[0] = true;
    for &symbol in pattern {
        let mut next = vec![false; text.len() + 1];
        for (j, &byte) in text.iter().enumerate() {
            next[j + 1] = if symbol == b'*' {
                !matches!(byte, b':' | b'/') && (row[j] || next[j])
            } else {
                row[j] && symbol == byte
            };
        }
        row = next;
    }
    row[text.len()]
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn stars_match_within_one_segment() {
        assert!(glob_match(b"todo_list_*", b"todo_list_7"));
        assert!(!glob_match(b"todo_list_*", b"todo_list_"));
        assert!(!glob_match(
            b"https://*.example.com",
            b"https://a/b.example.com"
        ));
        assert!(glob_match(
            b"https://*.example.com",
            b"https://app.example.com"
        ));
    }
}
