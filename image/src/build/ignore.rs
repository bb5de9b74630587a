//! `.dockerignore`, with moby/patternmatcher's semantics, which both the classic builder and
//! BuildKit use: each line is trimmed, `#` lines are comments, `!` makes an exception, the
//! pattern is cleaned like Go's `filepath.Clean` and a leading `/` dropped (so `/a`, `./a`
//! and `a/` all mean `a`); patterns are Go `filepath.Match` globs where `**` spans
//! directories. A path is excluded when the last pattern that matches it or one of its
//! parent directories is not an exception: so `docs` excludes `docs/a/b`, and a later
//! `!docs/README.md` takes that one file back.
//!
//! `Dockerfile` and `.dockerignore` get no special case here. Docker documents that a
//! `.dockerignore` may name them: they still reach the builder (BuildKit reads the
//! Dockerfile through a separate channel, and the classic builder re-adds both to the
//! context), but ADD and COPY do not copy them. So the caller reads the Dockerfile
//! directly from the context directory, and COPY honours whatever this file says.

use super::glob::{BadPattern, Glob};
use super::path::clean;

/// How one pattern matches, as patternmatcher decides it: plain text and the two `**`
/// shapes it special-cases are string comparisons (with their quirks: `**foo` is "ends
/// with foo"), anything else a glob.
#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    /// `dir/**`: starts with `dir/`.
    Prefix(String),
    /// `**/name` or `**name`: ends with the rest (or is it, without the leading `/`).
    Suffix(String),
    Glob(Glob),
}

#[derive(Debug, Clone)]
struct Pattern {
    text: String,
    exception: bool,
    matcher: Matcher,
}

/// A parsed `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

/// A `.dockerignore` line that Go's `filepath.Match` would refuse, or a lone `!`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(".dockerignore line {line}: {reason}")]
pub struct IgnoreError {
    pub line: usize,
    pub reason: String,
}

impl Ignore {
    /// Parses the text of a `.dockerignore` (ignorefile.ReadAll, then patternmatcher.New).
    pub fn parse(text: &str) -> Result<Ignore, IgnoreError> {
        let mut patterns = Vec::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let mut p = line.trim();
            if p.is_empty() {
                continue;
            }
            let exception = p.starts_with('!');
            if exception {
                p = p[1..].trim();
                if p.is_empty() {
                    return Err(IgnoreError {
                        line: n + 1,
                        reason: "illegal exclusion pattern: \"!\"".into(),
                    });
                }
            }
            let mut cleaned = clean(p);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let matcher = compile(&cleaned).map_err(|e: BadPattern| IgnoreError {
                line: n + 1,
                reason: e.to_string(),
            })?;
            patterns.push(Pattern {
                text: cleaned,
                exception,
                matcher,
            });
        }
        Ok(Ignore { patterns })
    }

    /// Whether `rel_path` (relative to the context root, `/`-separated) is excluded:
    /// patternmatcher's `MatchesOrParentMatches`.
    pub fn matches(&self, rel_path: &str) -> bool {
        let file = clean(rel_path);
        let file = file.trim_start_matches('/');
        if file.is_empty() || file == "." {
            return false; // the context root itself is never excluded
        }
        let parents: Vec<&str> = match file.rfind('/') {
            Some(end) => {
                let dir = &file[..end];
                dir.match_indices('/')
                    .map(|(i, _)| &dir[..i])
                    .chain(std::iter::once(dir))
                    .collect()
            }
            None => Vec::new(),
        };
        let mut matched = false;
        for p in &self.patterns {
            // An inclusion cannot change a match, nor an exception a non-match.
            if p.exception != matched {
                continue;
            }
            if p.matches(file) || parents.iter().any(|d| p.matches(d)) {
                matched = !p.exception;
            }
        }
        matched
    }

    /// Whether a walk must look inside `dir`, which [`Ignore::matches`] excludes: only an
    /// exception can take back something below it. Conservative: an exception with any
    /// wildcard might, a literal one only if it lies under `dir`.
    pub fn may_include_under(&self, dir: &str) -> bool {
        let dir = clean(dir);
        let prefix = format!("{}/", dir.trim_start_matches('/'));
        self.patterns.iter().any(|p| {
            p.exception && (!matches!(p.matcher, Matcher::Exact(_)) || p.text.starts_with(&prefix))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(s) => path == s,
            Matcher::Prefix(s) => path.starts_with(s.as_str()),
            Matcher::Suffix(s) => {
                path.ends_with(s.as_str()) || s.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            Matcher::Glob(g) => g.matches(path),
        }
    }
}

/// patternmatcher's `compile`: text with no special character is an exact match, `x/**`
/// of plain text a prefix, `**` followed by plain text a suffix, the rest a glob.
fn compile(p: &str) -> Result<Matcher, BadPattern> {
    let glob = Glob::new_ignore(p)?;
    // filepath.Match's syntax check, which patternmatcher.New runs on every pattern.
    Glob::new(p)?;
    let special = |s: &str| s.contains(['*', '?', '[', ']', '\\']);
    if !special(p) {
        return Ok(Matcher::Exact(p.to_string()));
    }
    if let Some(head) = p.strip_suffix("**") {
        if !special(head) {
            return Ok(Matcher::Prefix(head.to_string()));
        }
    }
    if let Some(tail) = p.strip_prefix("**") {
        if !special(tail) {
            return Ok(Matcher::Suffix(tail.to_string()));
        }
    }
    Ok(Matcher::Glob(glob))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// patternmatcher_test.go `TestMatches`, with MatchesOrParentMatches semantics:
    /// pattern, path, matched (exactly or through a parent).
    #[test]
    fn patternmatcher_single_pattern_table() {
        let table: &[(&str, &str, bool)] = &[
            ("**", "file", true),
            ("**", "file/", true),
            ("**/", "file", true),
            ("**/", "file/", true),
            ("**", "dir/file", true),
            ("**/", "dir/file", true),
            ("**", "dir/file/", true),
            ("**/", "dir/file/", true),
            ("**/**", "dir/file", true),
            ("**/**", "dir/file/", true),
            ("dir/**", "dir/file", true),
            ("dir/**", "dir/file/", true),
            ("dir/**", "dir/dir2/file", true),
            ("dir/**", "dir/dir2/file/", true),
            ("**/dir", "dir", true),
            ("**/dir", "dir/file", true),
            ("**/dir2/*", "dir/dir2/file", true),
            ("**/dir2/*", "dir/dir2/file/", true),
            ("**/dir2/**", "dir/dir2/dir3/file", true),
            ("**/dir2/**", "dir/dir2/dir3/file/", true),
            ("**file", "file", true),
            ("**file", "dir/file", true),
            ("**/file", "dir/file", true),
            ("**file", "dir/dir/file", true),
            ("**/file", "dir/dir/file", true),
            ("**/file*", "dir/dir/file", true),
            ("**/file*", "dir/dir/file.txt", true),
            ("**/file*txt", "dir/dir/file.txt", true),
            ("**/file*.txt", "dir/dir/file.txt", true),
            ("**/file*.txt*", "dir/dir/file.txt", true),
            ("**/**/*.txt", "dir/dir/file.txt", true),
            ("**/**/*.txt2", "dir/dir/file.txt", false),
            ("**/*.txt", "file.txt", true),
            ("**/**/*.txt", "file.txt", true),
            ("a**/*.txt", "a/file.txt", true),
            ("a**/*.txt", "a/dir/file.txt", true),
            ("a**/*.txt", "a/dir/dir/file.txt", true),
            ("a/*.txt", "a/dir/file.txt", false),
            ("a/*.txt", "a/file.txt", true),
            ("a/*.txt**", "a/file.txt", true),
            ("a[b-d]e", "ae", false),
            ("a[b-d]e", "ace", true),
            ("a[b-d]e", "aae", false),
            ("a[^b-d]e", "aze", true),
            (".*", ".foo", true),
            (".*", "foo", false),
            ("abc.def", "abcdef", false),
            ("abc.def", "abc.def", true),
            ("abc.def", "abcZdef", false),
            ("abc?def", "abcZdef", true),
            ("abc?def", "abcdef", false),
            ("**/foo/bar", "foo/bar", true),
            ("**/foo/bar", "dir/foo/bar", true),
            ("**/foo/bar", "dir/dir2/foo/bar", true),
            ("abc/**", "abc", false),
            ("abc/**", "abc/def", true),
            ("abc/**", "abc/def/ghi", true),
            ("**/.foo", ".foo", true),
            ("**/.foo", "bar.foo", false),
            ("a(b)c/def", "a(b)c/def", true),
            ("a(b)c/def", "a(b)c/xyz", false),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
            ),
            ("a\\\\", "a\\", true),
            ("a\\*b", "a*b", true),
            // Leading `/` and `./` are dropped; a directory excludes what is under it.
            ("/docs", "docs/README.md", true),
            ("./docs/", "docs/a/b", true),
            ("docs", "docsx", false),
            ("a*", "ab/c", true),
        ];
        for &(pattern, path, want) in table {
            let ig = Ignore::parse(pattern).unwrap();
            assert_eq!(ig.matches(path), want, "{pattern:?} against {path:?}");
        }
    }

    #[test]
    fn exceptions_and_last_match_wins() {
        let cases: &[(&str, &str, bool)] = &[
            ("**\n!util/docker/web", "util/docker/web/foo", false),
            (
                "**\n!util/docker/web\nutil/docker/web/foo",
                "util/docker/web/foo",
                true,
            ),
            (
                "**\n!dist/*.whl",
                "dist/proxy.py-2.4.0rc3-py3-none-any.whl",
                false,
            ),
            ("!fileutils.go\n*.go", "fileutils.go", true),
            ("*.go\n!fileutils.go", "fileutils.go", false),
            ("docs\n!docs/README.md", "docs/README.md", false),
            ("docs/\n!docs/README.md", "docs/README.md", false),
            ("docs/*\n!docs/README.md", "docs/README.md", false),
            ("docs\n!docs/README.md", "docs/other.md", true),
            ("# comment\n\n  *.md  \n", "a.md", true),
            ("# *.md\n", "a.md", false),
            ("*.md\n! keep.md", "keep.md", false),
            ("\u{feff}*.md", "a.md", true),
            ("Dockerfile\n.dockerignore", "Dockerfile", true),
        ];
        for &(text, path, want) in cases {
            let ig = Ignore::parse(text).unwrap();
            assert_eq!(ig.matches(path), want, "{text:?} against {path:?}");
        }
        assert!(!Ignore::parse("*").unwrap().matches("."));
    }

    #[test]
    fn bad_patterns_are_refused_with_their_line() {
        let e = Ignore::parse("ok\n!").unwrap_err();
        assert_eq!(e.line, 2);
        let e = Ignore::parse("a\n\n[").unwrap_err();
        assert_eq!(e.line, 3);
    }

    #[test]
    fn pruning_keeps_exceptions_reachable() {
        let ig = Ignore::parse("docs\n!docs/keep/me.md").unwrap();
        assert!(ig.may_include_under("docs"));
        assert!(!ig.may_include_under("other"));
        let ig = Ignore::parse("build\n!**/*.keep").unwrap();
        assert!(ig.may_include_under("build"));
        assert!(!Ignore::parse("build").unwrap().may_include_under("build"));
    }
}
