//! The Compose specification's interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+replacement}`,
//! `${VAR+replacement}` and `$$` for a literal `$`, applied to every string value of a
//! Compose file (not to keys) before anything else reads it, as compose-go does. Defaults
//! and replacements are interpolated themselves, so `${A:-${B:-x}}` works. A `$` followed
//! by anything else is an error, as in docker compose, rather than silently kept.
//!
//! Also the `.env` file's syntax (compose-go's dotenv): `KEY=VALUE` lines, an optional
//! `export `, `#` comments, single quotes (literal), double quotes (`\n`, `\t`, `\\`, `\"`
//! escapes; interpolated), unquoted values trimmed, cut at ` #` and interpolated.

use anyhow::{bail, Context};
use std::collections::BTreeMap;

/// Interpolates `text`; `lookup` gives a variable's value (`None`: unset). Unset variables
/// without a default become "" and are reported through `warn` once per use, as docker
/// compose warns.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    warn: &mut dyn FnMut(&str),
) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body_and_rest) = after.strip_prefix('{') {
            let end = closing_brace(body_and_rest).with_context(|| {
                format!("invalid interpolation format in {text:?}: a ${{ without its }}")
            })?;
            out.push_str(&braced(&body_and_rest[..end], text, lookup, warn)?);
            rest = &body_and_rest[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                bail!(
                    "invalid interpolation format in {text:?}: a $ must be followed by a \
                     variable name or {{; write $$ for a literal $"
                );
            }
            out.push_str(&value_or_warn(&after[..len], lookup, warn));
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The length of the variable name at the start of `s` ([_a-zA-Z][_a-zA-Z0-9]*).
fn name_len(s: &str) -> usize {
    let mut n = 0;
    for (i, c) in s.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            break;
        }
        n = i + c.len_utf8();
    }
    n
}

/// Where the `}` that closes a `${` is, counting nested `${...}`.
fn closing_brace(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn value_or_warn(
    name: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    warn: &mut dyn FnMut(&str),
) -> String {
    lookup(name).unwrap_or_else(|| {
        warn(&format!(
            "the {name} variable is not set: defaulting to a blank string"
        ));
        String::new()
    })
}

/// The inside of `${...}`.
fn braced(
    body: &str,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    warn: &mut dyn FnMut(&str),
) -> anyhow::Result<String> {
    let len = name_len(body);
    let (name, op) = body.split_at(len);
    if name.is_empty() {
        bail!("invalid interpolation format in {text:?}: ${{{body}}} names no variable");
    }
    if op.is_empty() {
        return Ok(value_or_warn(name, lookup, warn));
    }
    let value = lookup(name);
    let (colon, op) = match op.strip_prefix(':') {
        Some(o) => (true, o),
        None => (false, op),
    };
    let Some(kind) = op.chars().next() else {
        bail!("invalid interpolation format in {text:?}: ${{{body}}}");
    };
    let arg = &op[1..];
    // With the colon an empty value counts as unset, as in the shell.
    let set = match &value {
        Some(v) => !(colon && v.is_empty()),
        None => false,
    };
    match kind {
        '-' if set => Ok(value.unwrap_or_default()),
        '-' => interpolate(arg, lookup, warn),
        '?' if set => Ok(value.unwrap_or_default()),
        '?' => {
            let msg = interpolate(arg, lookup, warn)?;
            if msg.is_empty() {
                bail!("required variable {name} is missing a value")
            }
            bail!("required variable {name} is missing a value: {msg}")
        }
        '+' if set => interpolate(arg, lookup, warn),
        '+' => Ok(String::new()),
        _ => bail!(
            "invalid interpolation format in {text:?}: ${{{body}}} (known forms: ${{V}}, \
             ${{V:-default}}, ${{V-default}}, ${{V:?error}}, ${{V?error}}, ${{V:+alt}}, ${{V+alt}})"
        ),
    }
}

/// Parses a `.env` file's text. Values may refer to variables set earlier in the file or
/// in `outer` (the process environment, which also wins over the file, as in compose).
pub fn parse_dotenv(
    text: &str,
    outer: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim_start()),
            // A bare KEY names a variable to take from the environment: nothing to add.
            None => continue,
        };
        if name_len(key) != key.len() || key.is_empty() {
            bail!("line {}: {key:?} is not a variable name", n + 1);
        }
        let lookup = |name: &str| outer(name).or_else(|| vars.get(name).cloned());
        let value = if let Some(v) = value.strip_prefix('\'') {
            let end = v
                .find('\'')
                .with_context(|| format!("line {}: unterminated single quote", n + 1))?;
            v[..end].to_string()
        } else if let Some(v) = value.strip_prefix('"') {
            let mut s = String::new();
            let mut chars = v.chars();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('r') => s.push('\r'),
                        Some(o) => s.push(o),
                        None => s.push('\\'),
                    },
                    c => s.push(c),
                }
            }
            if !closed {
                bail!("line {}: unterminated double quote", n + 1);
            }
            interpolate(&s, &lookup, &mut |_| {}).with_context(|| format!("line {}", n + 1))?
        } else {
            let v = match value.find(" #") {
                Some(i) => &value[..i],
                None => value,
            };
            interpolate(v.trim_end(), &lookup, &mut |_| {})
                .with_context(|| format!("line {}", n + 1))?
        };
        vars.insert(key.to_string(), value);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            "TAG" => Some("1.2".into()),
            _ => None,
        }
    }

    fn run(text: &str) -> (anyhow::Result<String>, Vec<String>) {
        let mut warnings = Vec::new();
        let r = interpolate(text, &env, &mut |w| warnings.push(w.to_string()));
        (r, warnings)
    }

    fn ok(text: &str) -> String {
        run(text).0.unwrap()
    }

    #[test]
    fn plain_and_braced() {
        assert_eq!(ok("no vars"), "no vars");
        assert_eq!(ok("img:$TAG"), "img:1.2");
        assert_eq!(ok("img:${TAG}-x"), "img:1.2-x");
        assert_eq!(ok("$SET$SET"), "valuevalue");
        assert_eq!(ok("${SET}_$TAG."), "value_1.2.");
        assert_eq!(ok("ünï$SET"), "ünïvalue");
    }

    #[test]
    fn dollar_dollar_is_a_literal_dollar() {
        assert_eq!(ok("$$HOME and $${X}"), "$HOME and ${X}");
        assert_eq!(ok("cost: $$5"), "cost: $5");
    }

    #[test]
    fn defaults_with_and_without_colon() {
        assert_eq!(ok("${UNSET:-d}"), "d");
        assert_eq!(ok("${UNSET-d}"), "d");
        assert_eq!(ok("${EMPTY:-d}"), "d");
        assert_eq!(ok("${EMPTY-d}"), "");
        assert_eq!(ok("${SET:-d}"), "value");
        assert_eq!(ok("${UNSET:-}"), "");
        assert_eq!(ok("${UNSET:-a b:c}"), "a b:c");
        assert_eq!(ok("${UNSET:-${TAG}}"), "1.2");
        assert_eq!(ok("${UNSET:-${ALSO:-deep}}"), "deep");
        assert_eq!(ok("${UNSET:-$$}"), "$");
    }

    #[test]
    fn alternatives() {
        assert_eq!(ok("${SET:+yes}"), "yes");
        assert_eq!(ok("${EMPTY:+yes}"), "");
        assert_eq!(ok("${EMPTY+yes}"), "yes");
        assert_eq!(ok("${UNSET+yes}"), "");
    }

    #[test]
    fn required_variables() {
        assert_eq!(ok("${SET:?must}"), "value");
        let e = run("${UNSET:?set UNSET to the db password}").0.unwrap_err();
        assert_eq!(
            e.to_string(),
            "required variable UNSET is missing a value: set UNSET to the db password"
        );
        assert!(run("${EMPTY:?x}").0.is_err());
        assert_eq!(ok("${EMPTY?x}"), "");
        assert!(run("${UNSET?x}").0.is_err());
        assert_eq!(
            run("${UNSET:?}").0.unwrap_err().to_string(),
            "required variable UNSET is missing a value"
        );
    }

    #[test]
    fn unset_warns_and_is_blank() {
        let (r, w) = run("a${UNSET}b$NOPE");
        assert_eq!(r.unwrap(), "ab");
        assert_eq!(w.len(), 2);
        assert!(w[0].contains("UNSET variable is not set"), "{w:?}");
        let (_, w) = run("${UNSET:-d}");
        assert!(w.is_empty());
    }

    #[test]
    fn malformed_is_an_error() {
        for bad in [
            "$", "a $1", "${", "${SET", "${}", "${:-x}", "${SET!x}", "$ x",
        ] {
            assert!(run(bad).0.is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn dotenv_syntax() {
        let text =
            "# comment\n\nA=1\nexport B = two words \nC='lit $A #x'\nD=\"q $A\\n\\\"x\\\"\"\n\
                    E=${A}${UNSET:-z} # trailing comment\nF=\nG=a#b\nBARE\nSET=from-file\n";
        let vars = parse_dotenv(text, &|n| env(n)).unwrap();
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "lit $A #x");
        assert_eq!(vars["D"], "q 1\n\"x\"");
        assert_eq!(vars["E"], "1z");
        assert_eq!(vars["F"], "");
        assert_eq!(vars["G"], "a#b");
        assert!(!vars.contains_key("BARE"));
        assert_eq!(vars["SET"], "from-file");
        assert!(parse_dotenv("1X=2", &|_| None).is_err());
        assert!(parse_dotenv("X='open", &|_| None).is_err());
    }
}
