//! Go's `filepath.Match` patterns, the only glob language Dockerfiles know: COPY sources
//! match one path component per pattern component, and `.dockerignore` lines use the same
//! syntax plus `**` (moby/patternmatcher). One matcher serves both: a pattern is compiled
//! to tokens once and matched by dynamic programming, so a hostile pattern such as
//! `*a*a*a*a*b` costs `O(pattern × path)`, never exponential backtracking.

/// Why a pattern is malformed; Go's `filepath.ErrBadPattern` carries no more than this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("syntax error in pattern {0:?}")]
pub struct BadPattern(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `?`: any one character but `/`.
    One,
    /// `*`: any run of characters without `/`.
    Star,
    /// `**/` inside a `.dockerignore` pattern: any number of whole directories, even none.
    Dirs,
    /// `**` at the end of a `.dockerignore` pattern: anything at all.
    Rest,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    tokens: Vec<Token>,
}

/// Whether `s` has a character `filepath.Match` treats specially (an escaped one does not
/// count), as BuildKit decides whether a COPY source is a glob.
pub(crate) fn has_wildcards(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

impl Glob {
    /// `filepath.Match` syntax: `*` and `?` never cross `/`; `**` is two stars.
    pub(crate) fn new(pattern: &str) -> Result<Glob, BadPattern> {
        compile(pattern, false)
    }

    /// patternmatcher's dialect for `.dockerignore`: `**/` is any number of directories
    /// and a trailing `**` anything, else as [`Glob::new`].
    pub(crate) fn new_ignore(pattern: &str) -> Result<Glob, BadPattern> {
        compile(pattern, true)
    }

    /// Whether the whole of `s` matches.
    pub(crate) fn matches(&self, s: &str) -> bool {
        let text: Vec<char> = s.chars().collect();
        let t = &self.tokens;
        // reach[j]: the tokens so far can consume exactly text[..j].
        let mut reach = vec![false; text.len() + 1];
        reach[0] = true;
        for token in t {
            let mut next = vec![false; text.len() + 1];
            match token {
                Token::Star | Token::Rest => {
                    let mut on = false;
                    for j in 0..=text.len() {
                        if reach[j] {
                            on = true;
                        }
                        next[j] = on;
                        if j < text.len() && text[j] == '/' && matches!(token, Token::Star) {
                            on = false;
                        }
                    }
                }
                Token::Dirs => {
                    // `(.*/)?`: nothing, or anything that ends with a `/`.
                    let mut seen = false;
                    for j in 0..=text.len() {
                        next[j] = reach[j] || (seen && j > 0 && text[j - 1] == '/');
                        if reach[j] {
                            seen = true;
                        }
                    }
                }
                _ => {
                    for j in 0..text.len() {
                        if reach[j] && single(token, text[j]) {
                            next[j + 1] = true;
                        }
                    }
                }
            }
            reach = next;
        }
        reach[text.len()]
    }
}

fn single(token: &Token, c: char) -> bool {
    match token {
        Token::Char(x) => *x == c,
        Token::One => c != '/',
        Token::Class { negated, ranges } => {
            c != '/' && ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
        }
        Token::Star | Token::Dirs | Token::Rest => unreachable!("handled by the caller"),
    }
}

fn compile(pattern: &str, ignore_dialect: bool) -> Result<Glob, BadPattern> {
    let bad = || BadPattern(pattern.to_string());
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if ignore_dialect && chars.get(i + 1) == Some(&'*') => {
                i += 2;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i == chars.len() {
                    Token::Rest
                } else {
                    Token::Dirs
                });
            }
            '*' => {
                tokens.push(Token::Star);
                i += 1;
            }
            '?' => {
                tokens.push(Token::One);
                i += 1;
            }
            '\\' => {
                let c = *chars.get(i + 1).ok_or_else(bad)?;
                tokens.push(Token::Char(c));
                i += 2;
            }
            '[' => {
                i += 1;
                let negated = chars.get(i) == Some(&'^');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                loop {
                    let c = *chars.get(i).ok_or_else(bad)?;
                    if c == ']' && !ranges.is_empty() {
                        i += 1;
                        break;
                    }
                    let (lo, after) = class_char(&chars, i).ok_or_else(bad)?;
                    i = after;
                    let mut hi = lo;
                    if chars.get(i) == Some(&'-') {
                        let (h, after) = class_char(&chars, i + 1).ok_or_else(bad)?;
                        hi = h;
                        i = after;
                    }
                    ranges.push((lo, hi));
                }
                tokens.push(Token::Class { negated, ranges });
            }
            c => {
                tokens.push(Token::Char(c));
                i += 1;
            }
        }
    }
    Ok(Glob { tokens })
}

/// One character of a class at `i` (escaped or not; `-` and `]` only escaped), and where
/// the next begins.
fn class_char(chars: &[char], i: usize) -> Option<(char, usize)> {
    match *chars.get(i)? {
        '\\' => Some((*chars.get(i + 1)?, i + 2)),
        '-' | ']' => None,
        c => Some((c, i + 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's own `filepath.Match` table (path/filepath/match_test.go), as patternmatcher
    /// copies it: pattern, text, match, bad pattern.
    #[test]
    fn go_filepath_match_table() {
        let table: &[(&str, &str, bool, bool)] = &[
            ("abc", "abc", true, false),
            ("*", "abc", true, false),
            ("*c", "abc", true, false),
            ("a*", "a", true, false),
            ("a*", "abc", true, false),
            ("a*", "ab/c", false, false),
            ("a*/b", "abc/b", true, false),
            ("a*/b", "a/c/b", false, false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true, false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true, false),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false, false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false, false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true, false),
            ("a*b?c*x", "abxbbxdbxebxczzy", false, false),
            ("ab[c]", "abc", true, false),
            ("ab[b-d]", "abc", true, false),
            ("ab[e-g]", "abc", false, false),
            ("ab[^c]", "abc", false, false),
            ("ab[^b-d]", "abc", false, false),
            ("ab[^e-g]", "abc", true, false),
            ("a\\*b", "a*b", true, false),
            ("a\\*b", "ab", false, false),
            ("a?b", "a☺b", true, false),
            ("a[^a]b", "a☺b", true, false),
            ("a???b", "a☺b", false, false),
            ("a[^a][^a][^a]b", "a☺b", false, false),
            ("[a-ζ]*", "α", true, false),
            ("*[a-ζ]", "A", false, false),
            ("a?b", "a/b", false, false),
            ("a*b", "a/b", false, false),
            ("[\\]a]", "]", true, false),
            ("[\\-]", "-", true, false),
            ("[x\\-]", "x", true, false),
            ("[x\\-]", "-", true, false),
            ("[x\\-]", "z", false, false),
            ("[\\-x]", "x", true, false),
            ("[\\-x]", "-", true, false),
            ("[\\-x]", "a", false, false),
            ("[]a]", "]", false, true),
            ("[-]", "-", false, true),
            ("[x-]", "x", false, true),
            ("[-x]", "x", false, true),
            ("\\", "a", false, true),
            ("[a-b-c]", "a", false, true),
            ("[", "a", false, true),
            ("[^", "a", false, true),
            ("[^bc", "a", false, true),
            ("a[", "a", false, true),
            ("*x", "xxx", true, false),
        ];
        for &(pattern, text, want, bad) in table {
            match Glob::new(pattern) {
                Ok(g) => {
                    assert!(!bad, "{pattern:?} should be a bad pattern");
                    assert_eq!(g.matches(text), want, "{pattern:?} against {text:?}");
                }
                Err(_) => assert!(bad, "{pattern:?} should compile"),
            }
        }
    }

    #[test]
    fn wildcards_are_detected_unless_escaped() {
        assert!(has_wildcards("*.txt"));
        assert!(has_wildcards("a/b?"));
        assert!(has_wildcards("[ab]"));
        assert!(!has_wildcards("plain/file.txt"));
        assert!(!has_wildcards("a\\*b"));
    }

    #[test]
    fn many_stars_stay_linear() {
        let g = Glob::new(&"*a".repeat(40)).unwrap();
        assert!(!g.matches(&"a".repeat(39)));
        assert!(g.matches(&"a".repeat(400)));
    }
}
