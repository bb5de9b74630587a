//! Variable expansion and quote removal as BuildKit's `shell/lex.go` applies them to
//! instruction arguments. It is not a shell: no command substitution, no globbing of file
//! names, no field splitting except where Docker splits (EXPOSE, ...). An unset variable
//! expands to "" and `${V?}` is the only way to make that an error, as in BuildKit.

use std::collections::HashMap;

use super::Error;

/// How deep `${A:-${B:-...}}` may nest before expansion gives up; it keeps a hostile
/// Dockerfile from exhausting the stack.
const MAX_NESTING: usize = 64;

/// The most bytes one word may expand to. Without a bound, `ENV A=$A$A$A$A` a few lines
/// over makes a Dockerfile of a few hundred bytes allocate gigabytes; nothing real comes
/// near this (Linux refuses an environment string over 128 KiB at exec).
pub const MAX_EXPANDED: usize = 1 << 20;

/// Appends a variable's `value` to `out`, refusing to pass [`MAX_EXPANDED`].
fn append(out: &mut String, value: &str) -> Result<(), String> {
    if out.len() + value.len() > MAX_EXPANDED {
        return Err(format!("expands to more than {MAX_EXPANDED} bytes"));
    }
    out.push_str(value);
    Ok(())
}

/// Build arguments and environment in the order they were set, as the executor tracks them
/// through ARG and ENV. A variable set to "" is set: `${V-x}` keeps it, `${V:-x}` does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    entries: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Vars {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| self.entries[i].1.as_str())
    }

    /// Replaces the value in place, so a re-set variable keeps its original position (the
    /// order an image config's Env lists them in).
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.index.get(&name) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(name.clone(), self.entries.len());
                self.entries.push((name, value));
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Vars {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut vars = Vars::new();
        for (k, v) in iter {
            vars.set(k, v);
        }
        vars
    }
}

/// Expands one word: quotes removed, escapes applied, variables substituted; whitespace is
/// kept (BuildKit's `ProcessWord`, used for WORKDIR, ENV values, COPY paths, ...).
pub fn expand_word(raw: &str, vars: &Vars, escape: char) -> Result<String, Error> {
    Lexer::new(raw, vars, escape, Mode::Word)
        .run()
        .map(|(word, _)| word)
        .map_err(|e| expand_error(raw, e))
}

/// Expands and then splits on whitespace that was neither quoted nor escaped; whitespace a
/// variable's value brings in splits too (BuildKit's `ProcessWords`, used for EXPOSE).
pub fn expand_words(raw: &str, vars: &Vars, escape: char) -> Result<Vec<String>, Error> {
    Lexer::new(raw, vars, escape, Mode::Word)
        .run()
        .map(|(_, words)| words)
        .map_err(|e| expand_error(raw, e))
}

/// Substitutes variables in a COPY/ADD here-document whose delimiter was not quoted.
/// Quotes are ordinary characters there, and the escape character only protects `$` and
/// itself, as in a shell's unquoted here-document, so `printf "a\n"` survives.
pub(crate) fn expand_heredoc(raw: &str, vars: &Vars) -> Result<String, Error> {
    Lexer::new(raw, vars, '\\', Mode::Heredoc)
        .run()
        .map(|(word, _)| word)
        .map_err(|e| expand_error(raw, e))
}

fn expand_error(raw: &str, message: String) -> Error {
    let shown: String = raw.chars().take(80).collect();
    let more = if shown.len() < raw.len() { "..." } else { "" };
    Error::Expand(format!("failed to expand {shown:?}{more}: {message}"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Word,
    Heredoc,
}

/// Words as `ProcessWords` forms them: characters from quotes and escapes never split,
/// whitespace from the text or from a variable's value does.
#[derive(Default)]
struct Words {
    done: Vec<String>,
    word: String,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            self.flush();
        } else {
            self.word.push(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
    }

    fn add_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    fn add_raw_str(&mut self, s: &str) {
        self.word.push_str(s);
    }

    fn flush(&mut self) {
        if !self.word.is_empty() {
            self.done.push(std::mem::take(&mut self.word));
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.flush();
        self.done
    }
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    vars: &'a Vars,
    escape: char,
    mode: Mode,
    depth: usize,
}

type Lexed = (String, Vec<String>);

impl<'a> Lexer<'a> {
    fn new(raw: &str, vars: &'a Vars, escape: char, mode: Mode) -> Self {
        Lexer {
            chars: raw.chars().collect(),
            pos: 0,
            vars,
            escape,
            mode,
            depth: 0,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    fn run(mut self) -> Result<Lexed, String> {
        let (word, words, _) = self.until(&[], false)?;
        Ok((word, words))
    }

    /// Processes up to (and consuming) one of `stop`, or to the end when `stop` is empty.
    /// `keep_escapes` leaves escape characters in place, for glob patterns whose own
    /// escapes must survive until they are matched.
    fn until(
        &mut self,
        stop: &[char],
        keep_escapes: bool,
    ) -> Result<(String, Vec<String>, char), String> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if stop.contains(&ch) {
                self.pos += 1;
                return Ok((result, words.finish(), ch));
            }
            match ch {
                '$' => {
                    let value = self.dollar()?;
                    append(&mut result, &value)?;
                    words.add_str(&value);
                }
                '\'' | '"' if self.mode == Mode::Word => {
                    let quoted = if ch == '\'' {
                        self.single_quoted()?
                    } else {
                        self.double_quoted()?
                    };
                    result.push_str(&quoted);
                    words.add_raw_str(&quoted);
                }
                _ => {
                    self.pos += 1;
                    if ch != self.escape {
                        result.push(ch);
                        words.add_char(ch);
                        continue;
                    }
                    let Some(escaped) = self.next() else { break };
                    let keep = keep_escapes
                        || (self.mode == Mode::Heredoc && escaped != '$' && escaped != self.escape);
                    if keep {
                        result.push(ch);
                        words.add_raw_char(ch);
                    }
                    result.push(escaped);
                    words.add_raw_char(escaped);
                }
            }
        }
        match stop.first() {
            None => Ok((result, words.finish(), '\0')),
            Some('}') => Err("syntax error: missing '}'".into()),
            Some(c) => Err(format!(
                "unexpected end of statement while looking for matching {c}"
            )),
        }
    }

    fn single_quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('$') => append(&mut out, &self.dollar()?)?,
                Some(c) => {
                    self.pos += 1;
                    if c == self.escape {
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.pos += 1;
                                out.push(n);
                                continue;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {
                while let Some(d) = self.peek().filter(|d| d.is_ascii_digit()) {
                    name.push(d);
                    self.pos += 1;
                }
            }
            Some(c @ ('@' | '*' | '#' | '?' | '-' | '$' | '!')) => {
                self.pos += 1;
                name.push(c);
            }
            _ => {
                while let Some(c) = self.peek().filter(|c| c.is_alphanumeric() || *c == '_') {
                    name.push(c);
                    self.pos += 1;
                }
            }
        }
        name
    }

    fn dollar(&mut self) -> Result<String, String> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(self.vars.get(&name).unwrap_or_default().to_string());
        }
        self.pos += 1;
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.name();
        let value = self.vars.get(&name);
        match self.next() {
            None => Err("syntax error: missing '}'".into()),
            Some('}') => Ok(value.unwrap_or_default().to_string()),
            Some(op @ (':' | '+' | '-' | '?' | '#' | '%')) => {
                let (colon, op) = match op {
                    ':' => (true, self.next().ok_or("syntax error: missing '}'")?),
                    _ => (false, op),
                };
                if colon && !matches!(op, '+' | '-' | '?') {
                    return Err(format!("unsupported modifier (:{op}) in substitution"));
                }
                let pattern = op == '#' || op == '%';
                let (word, _, _) = self.nested(&['}'], pattern)?;
                let unset = value.is_none() || (colon && value == Some(""));
                match op {
                    '-' if unset => Ok(word),
                    '-' => Ok(value.unwrap_or_default().to_string()),
                    '+' if unset => Ok(String::new()),
                    '+' => Ok(word),
                    '?' if unset => {
                        let why = if !word.is_empty() {
                            word
                        } else if value.is_none() {
                            "is not allowed to be unset".into()
                        } else {
                            "is not allowed to be empty".into()
                        };
                        Err(format!("{name}: {why}"))
                    }
                    '?' => Ok(value.unwrap_or_default().to_string()),
                    _ => {
                        let (longest, pat) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest),
                            None => (false, word.as_str()),
                        };
                        let value = value.unwrap_or_default();
                        Ok(trim(value, &Glob::new(pat), op == '#', longest))
                    }
                }
            }
            Some('/') => {
                let all = self.peek() == Some('/');
                if all {
                    self.pos += 1;
                }
                let (pat, _, stopped) = self.nested(&['/', '}'], true)?;
                let with = if stopped == '/' {
                    self.nested(&['}'], false)?.0
                } else {
                    String::new()
                };
                Ok(replace(
                    value.unwrap_or_default(),
                    &Glob::new(&pat),
                    &with,
                    all,
                ))
            }
            Some(op) => Err(format!("unsupported modifier ({op}) in substitution")),
        }
    }

    fn nested(
        &mut self,
        stop: &[char],
        keep_escapes: bool,
    ) -> Result<(String, Vec<String>, char), String> {
        if self.depth >= MAX_NESTING {
            return Err(format!("substitutions nested deeper than {MAX_NESTING}"));
        }
        self.depth += 1;
        let out = self.until(stop, keep_escapes);
        self.depth -= 1;
        out
    }
}

/// One element of a shell pattern (`*`, `?`, `[...]`, or a literal character).
#[derive(Clone, Debug)]
enum Token {
    Char(char),
    Any,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Char(l) => *l == c,
            Token::Any | Token::Star => true,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(a, b)| a <= c && c <= b) != *negated
            }
        }
    }
}

/// A shell pattern matched by simulating its automaton over the value: linear in the value
/// for each start position, with no backtracking to blow up.
struct Glob(Vec<Token>);

impl Glob {
    fn new(pattern: &str) -> Glob {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '*' => tokens.push(Token::Star),
                '?' => tokens.push(Token::Any),
                '\\' if i < chars.len() => {
                    tokens.push(Token::Char(chars[i]));
                    i += 1;
                }
                '[' => match class(&chars[i..]) {
                    Some((token, used)) => {
                        tokens.push(token);
                        i += used;
                    }
                    None => tokens.push(Token::Char('[')),
                },
                c => tokens.push(Token::Char(c)),
            }
        }
        Glob(tokens)
    }

    fn reversed(&self) -> Glob {
        Glob(self.0.iter().rev().cloned().collect())
    }

    /// Lengths of the prefixes of `value` the whole pattern matches, shortest first.
    fn prefix_matches(&self, value: &[char]) -> Vec<usize> {
        let n = self.0.len();
        let mut states = vec![false; n + 1];
        states[0] = true;
        self.close(&mut states);
        let mut found = Vec::new();
        for k in 0..=value.len() {
            if states[n] {
                found.push(k);
            }
            if k == value.len() || !states.iter().any(|&s| s) {
                break;
            }
            let mut next = vec![false; n + 1];
            for (i, token) in self.0.iter().enumerate() {
                if states[i] && token.matches(value[k]) {
                    let to = if matches!(token, Token::Star) {
                        i
                    } else {
                        i + 1
                    };
                    next[to] = true;
                }
            }
            self.close(&mut next);
            states = next;
        }
        found
    }

    /// A `*` may match nothing, so reaching it reaches what follows it.
    fn close(&self, states: &mut [bool]) {
        for (i, token) in self.0.iter().enumerate() {
            if states[i] && matches!(token, Token::Star) {
                states[i + 1] = true;
            }
        }
    }
}

/// `[...]` after its `[`: the token and how many characters it used, or None when the
/// bracket is not closed (it is then a literal `[`, as in the shell).
fn class(chars: &[char]) -> Option<(Token, usize)> {
    let mut i = 0;
    let negated = matches!(chars.first(), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    while i < chars.len() {
        let mut c = chars[i];
        if c == ']' && !first {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        first = false;
        if c == '\\' && i + 1 < chars.len() {
            i += 1;
            c = chars[i];
        }
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|&e| e != ']') {
            ranges.push((c, chars[i + 2]));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    None
}

/// `${V#p}`, `${V##p}` (`prefix`) and `${V%p}`, `${V%%p}`.
fn trim(value: &str, glob: &Glob, prefix: bool, longest: bool) -> String {
    let mut chars: Vec<char> = value.chars().collect();
    let glob = if prefix {
        glob.prefix_matches(&chars)
    } else {
        chars.reverse();
        glob.reversed().prefix_matches(&chars)
    };
    let cut = if longest { glob.last() } else { glob.first() };
    let Some(&cut) = cut else {
        return value.to_string();
    };
    let rest: String = chars[cut..].iter().collect();
    if prefix {
        rest
    } else {
        rest.chars().rev().collect()
    }
}

/// `${V/p/r}` and `${V//p/r}`: the longest match at the leftmost position, as the shell
/// does; an empty match replaces nothing.
fn replace(value: &str, glob: &Glob, with: &str, all: bool) -> String {
    let chars: Vec<char> = value.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let mut replaced = false;
    while i < chars.len() {
        if !replaced || all {
            if let Some(&len) = glob.prefix_matches(&chars[i..]).last().filter(|&&l| l > 0) {
                out.push_str(with);
                i += len;
                replaced = true;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Splits an instruction line as BuildKit does to look for here-document markers: on
/// whitespace outside quotes, with quotes and backslashes kept. None when a quote is not
/// closed, in which case BuildKit finds no here-documents either.
pub(crate) fn raw_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                word.push(c);
                if c == q {
                    quote = None;
                } else if c == '\\' && q == '"' {
                    word.extend(chars.next());
                }
            }
            None if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            None => {
                word.push(c);
                if c == '\'' || c == '"' {
                    quote = Some(c);
                } else if c == '\\' {
                    word.extend(chars.next());
                }
            }
        }
    }
    if quote.is_some() {
        return None;
    }
    if !word.is_empty() {
        words.push(word);
    }
    Some(words)
}

/// The delimiter after `<<` or `<<-`, with quotes removed, and whether none were there (the
/// body is then expanded). None when it is not a single word.
pub(crate) fn heredoc_delimiter(rest: &str) -> Option<(String, bool)> {
    let empty = Vars::new();
    let words = Lexer::new(rest, &empty, '\\', Mode::Word).run().ok()?.1;
    match words.as_slice() {
        [name] => {
            let quoted = rest.contains(['\'', '"']);
            Some((name.clone(), !quoted))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        [
            ("A", "a"),
            ("EMPTY", ""),
            ("SP", "x  y"),
            ("PATHV", "/usr/local/bin/tool.tar.gz"),
        ]
        .into_iter()
        .collect()
    }

    fn w(raw: &str) -> String {
        expand_word(raw, &vars(), '\\').unwrap()
    }

    fn err(raw: &str) -> String {
        expand_word(raw, &vars(), '\\').unwrap_err().to_string()
    }

    #[test]
    fn plain_and_braced_variables() {
        assert_eq!(w("$A"), "a");
        assert_eq!(w("${A}_b"), "a_b");
        assert_eq!(w("$A_b"), "");
        assert_eq!(w("x$UNSET.y"), "x.y");
        assert_eq!(w("cost: $"), "cost: $");
        assert_eq!(w("$1x"), "x");
    }

    #[test]
    fn defaults_and_alternatives_tell_unset_from_empty() {
        assert_eq!(w("${UNSET:-d}"), "d");
        assert_eq!(w("${EMPTY:-d}"), "d");
        assert_eq!(w("${A:-d}"), "a");
        assert_eq!(w("${UNSET-d}"), "d");
        assert_eq!(w("${EMPTY-d}"), "");
        assert_eq!(w("${A:+alt}"), "alt");
        assert_eq!(w("${EMPTY:+alt}"), "");
        assert_eq!(w("${EMPTY+alt}"), "alt");
        assert_eq!(w("${UNSET+alt}"), "");
        assert_eq!(w("${UNSET:-${A}-${UNSET2:-z}}"), "a-z");
    }

    #[test]
    fn required_variables() {
        assert_eq!(w("${A:?no}"), "a");
        assert_eq!(w("${EMPTY?no}"), "");
        assert!(
            err("${UNSET?must set UNSET}").contains("UNSET: must set UNSET"),
            "{}",
            err("${UNSET?must set UNSET}")
        );
        assert!(err("${UNSET:?}").contains("UNSET: is not allowed to be unset"));
        assert!(err("${EMPTY:?}").contains("EMPTY: is not allowed to be empty"));
    }

    #[test]
    fn pattern_trimming() {
        assert_eq!(w("${PATHV#*/}"), "usr/local/bin/tool.tar.gz");
        assert_eq!(w("${PATHV##*/}"), "tool.tar.gz");
        assert_eq!(w("${PATHV%.*}"), "/usr/local/bin/tool.tar");
        assert_eq!(w("${PATHV%%.*}"), "/usr/local/bin/tool");
        assert_eq!(w("${PATHV%.[gt]z}"), "/usr/local/bin/tool.tar");
        assert_eq!(w("${PATHV#nomatch}"), "/usr/local/bin/tool.tar.gz");
        assert_eq!(w("${A#?}"), "");
        assert_eq!(w("${UNSET##*}"), "");
        assert!(err("${A:#x}").contains("unsupported modifier"));
    }

    #[test]
    fn pattern_replacement() {
        assert_eq!(w("${PATHV/\\//:}"), ":usr/local/bin/tool.tar.gz");
        assert_eq!(w("${PATHV//\\//:}"), ":usr:local:bin:tool.tar.gz");
        assert_eq!(w("${PATHV//o}"), "/usr/lcal/bin/tl.tar.gz");
        assert_eq!(w("${PATHV/l*l/L}"), "/usr/L.tar.gz");
        assert_eq!(w("${PATHV/[a-c]*/X}"), "/usr/loX");
        assert_eq!(w("${PATHV/[!\\/]/X}"), "/Xsr/local/bin/tool.tar.gz");
    }

    #[test]
    fn bad_substitutions() {
        assert!(err("${}").contains("bad substitution"));
        assert!(err("${:x}").contains("bad substitution"));
        assert!(err("${A").contains("missing '}'"));
        assert!(err("${A:-x").contains("missing '}'"));
        assert!(err("${A^^}").contains("unsupported modifier (^)"));
        assert!(err("${A:=x}").contains("unsupported modifier (:=)"));
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(w(r#""$A b""#), "a b");
        assert_eq!(w("'$A b'"), "$A b");
        assert_eq!(w(r"\$A"), "$A");
        assert_eq!(w(r"\${A}"), "${A}");
        assert_eq!(w(r#""a\"b""#), "a\"b");
        assert_eq!(w(r#""a\nb""#), "a\\nb");
        assert_eq!(w(r"a\ b"), "a b");
        assert_eq!(w(r"a\"), "a");
        assert_eq!(w(r#"it"'"s"#), "it's");
        assert!(err("'open").contains("single-quote"));
        assert!(err("\"open").contains("double-quote"));
    }

    #[test]
    fn backtick_escape() {
        let v = vars();
        assert_eq!(expand_word(r"C:\dir\$A", &v, '`').unwrap(), r"C:\dir\a");
        assert_eq!(expand_word("`$A", &v, '`').unwrap(), "$A");
        assert_eq!(expand_word("\"`\"\"", &v, '`').unwrap(), "\"");
    }

    #[test]
    fn words_split_after_expansion() {
        let v = vars();
        assert_eq!(
            expand_words("80/tcp  $A", &v, '\\').unwrap(),
            ["80/tcp", "a"]
        );
        assert_eq!(expand_words("$SP z", &v, '\\').unwrap(), ["x", "y", "z"]);
        assert_eq!(
            expand_words("\"$SP\" 'q r'", &v, '\\').unwrap(),
            ["x  y", "q r"]
        );
        assert_eq!(expand_words(r"a\ b c", &v, '\\').unwrap(), ["a b", "c"]);
        assert!(expand_words("$UNSET \"\"", &v, '\\').unwrap().is_empty());
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "${A:-".repeat(10_000) + &"}".repeat(10_000);
        assert!(err(&deep).contains("nested deeper"));
        let ok = "${U:-".repeat(20) + "x" + &"}".repeat(20);
        assert_eq!(w(&ok), "x");
    }

    #[test]
    fn long_words_expand_in_linear_time() {
        let long = "$A ".repeat(200_000);
        assert_eq!(expand_words(&long, &vars(), '\\').unwrap().len(), 200_000);
    }

    #[test]
    fn heredoc_bodies_keep_quotes_and_backslashes() {
        let v = vars();
        assert_eq!(
            expand_heredoc("echo \"$A\" 'it''s' \\$A \\\\ a\\nb\n", &v).unwrap(),
            "echo \"a\" 'it''s' $A \\ a\\nb\n"
        );
    }

    #[test]
    fn vars_keep_order_on_reset() {
        let mut v = Vars::new();
        v.set("B", "1");
        v.set("A", "2");
        v.set("B", "3");
        assert_eq!(v.iter().collect::<Vec<_>>(), [("B", "3"), ("A", "2")]);
        assert_eq!(v.get("B"), Some("3"));
        assert_eq!(v.get("C"), None);
    }

    #[test]
    fn heredoc_delimiters() {
        assert_eq!(heredoc_delimiter("EOF"), Some(("EOF".into(), true)));
        assert_eq!(heredoc_delimiter("\"EOF\""), Some(("EOF".into(), false)));
        assert_eq!(heredoc_delimiter("'EOF'"), Some(("EOF".into(), false)));
        assert_eq!(heredoc_delimiter("E\"O\"F"), Some(("EOF".into(), false)));
        assert_eq!(heredoc_delimiter(""), None);
        assert_eq!(
            raw_words("RUN a \"b c\" 'd e' f\\ g"),
            Some(vec![
                "RUN".into(),
                "a".into(),
                "\"b c\"".into(),
                "'d e'".into(),
                "f\\ g".into()
            ])
        );
        assert_eq!(raw_words("RUN \"open"), None);
    }
}
