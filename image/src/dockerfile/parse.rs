//! Text to stages, in BuildKit's two steps: physical lines to logical instructions
//! (directives, comments, continuations, here-documents), then each instruction's flags
//! and arguments. Every step is a single pass over its input, so a large Dockerfile costs
//! time in proportion to its size.

use std::collections::HashMap;
use std::time::Duration;

use super::words::{heredoc_delimiter, raw_words};
use super::{
    parse_mount, ArgDecl, Command, Copy, Directives, Dockerfile, Error, From, Healthcheck, Heredoc,
    Instruction, Kind, Run, Stage,
};

pub fn parse(text: &str) -> Result<Dockerfile, Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = Lines {
        lines: text.split('\n').collect(),
        pos: 0,
    };
    let directives = read_directives(&mut lines)?;
    let escape = directives.escape;
    let mut warnings = Vec::new();
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut stage_lines: HashMap<String, usize> = HashMap::new();
    let mut any = false;
    while let Some(logical) = lines.next_instruction(escape, &mut warnings)? {
        any = true;
        let line = logical.line;
        match instruction(
            &logical.text,
            line,
            logical.heredocs,
            escape,
            &mut warnings,
            false,
        )? {
            Parsed::From(from, name) => {
                if let Some(name) = &name {
                    if let Some(first) = stage_lines.insert(name.clone(), line) {
                        return Err(Error::at(
                            line,
                            format!("duplicate stage name {name:?} (first used on line {first})"),
                        ));
                    }
                }
                stages.push(Stage {
                    index: stages.len(),
                    name,
                    from,
                    instructions: Vec::new(),
                });
            }
            Parsed::Other(kind) => match (stages.last_mut(), kind) {
                (Some(stage), kind) => stage.instructions.push(Instruction {
                    line,
                    text: logical.text,
                    kind,
                }),
                (None, Kind::Arg(args)) => global_args.extend(args),
                (None, _) => {
                    let keyword = keyword_of(&logical.text).to_uppercase();
                    return Err(Error::at(
                        line,
                        format!("{keyword} before the first FROM: only ARG may come before FROM, which starts a stage"),
                    ));
                }
            },
        }
    }
    if !any {
        return Err(Error::Empty(
            "no instructions (the file is empty or only comments): start it with FROM <image> or FROM scratch".into(),
        ));
    }
    if stages.is_empty() {
        return Err(Error::Empty(
            "no FROM instruction: add FROM <image> (or FROM scratch) to start a stage".into(),
        ));
    }
    Ok(Dockerfile {
        directives,
        global_args,
        stages,
        warnings,
    })
}

struct Lines<'a> {
    /// Physical lines without their `\n` (a `\r` before it is kept, for here-documents).
    lines: Vec<&'a str>,
    pos: usize,
}

struct Logical {
    line: usize,
    text: String,
    heredocs: Vec<Heredoc>,
}

impl<'a> Lines<'a> {
    fn next_line(&mut self) -> Option<&'a str> {
        let line = self.lines.get(self.pos)?;
        self.pos += 1;
        Some(line.strip_suffix('\r').unwrap_or(line))
    }

    fn next_instruction(
        &mut self,
        escape: char,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Logical>, Error> {
        let (start, first) = loop {
            let start = self.pos + 1;
            let Some(line) = self.next_line() else {
                return Ok(None);
            };
            let trimmed = line.trim_start();
            if !trimmed.is_empty() && !trimmed.starts_with('#') {
                break (start, trimmed);
            }
        };
        let (piece, mut more) = continuation(first, escape);
        let mut text = piece.to_string();
        let mut empty_continuation = false;
        while more {
            let Some(line) = self.next_line() else { break };
            let trimmed = line.trim_start();
            if trimmed.starts_with('#') {
                continue;
            }
            if trimmed.is_empty() {
                empty_continuation = true;
                continue;
            }
            let (piece, again) = continuation(line, escape);
            text.push_str(piece);
            more = again;
        }
        let text = text.trim().to_string();
        if empty_continuation {
            warnings.push(format!(
                "Dockerfile:{start}: empty continuation line in {:?}; empty continuation lines will become errors in a future Docker release",
                text
            ));
        }
        let heredocs = if heredoc_capable(&text, true) {
            self.heredoc_bodies(&text, start)?
        } else {
            Vec::new()
        };
        Ok(Some(Logical {
            line: start,
            text,
            heredocs,
        }))
    }

    /// Reads the bodies of the here-documents `text` opens, in order, from the lines after it.
    fn heredoc_bodies(&mut self, text: &str, start: usize) -> Result<Vec<Heredoc>, Error> {
        let mut docs = Vec::new();
        for (name, expand, chomp_tabs) in heredoc_markers(text) {
            let mut content = String::new();
            let mut terminated = false;
            while let Some(raw) = self.lines.get(self.pos) {
                self.pos += 1;
                let mut candidate = raw.trim_end_matches(['\r', '\n']);
                if chomp_tabs {
                    candidate = candidate.trim_start_matches('\t');
                }
                if candidate == name {
                    terminated = true;
                    break;
                }
                content.push_str(if chomp_tabs {
                    raw.trim_start_matches('\t')
                } else {
                    raw
                });
                content.push('\n');
            }
            if !terminated {
                return Err(Error::at(
                    start,
                    format!("unterminated here-document: no line {name:?} ends it"),
                ));
            }
            docs.push(Heredoc {
                name,
                content,
                expand,
                chomp_tabs,
                destination: None,
            });
        }
        Ok(docs)
    }
}

/// `# key=value` lines at the very top; the first line that is not one ends them, so a
/// directive after a comment, a blank line or an instruction is an ordinary comment.
fn read_directives(lines: &mut Lines) -> Result<Directives, Error> {
    let mut directives = Directives::default();
    let mut seen: Vec<String> = Vec::new();
    while let Some(line) = lines.lines.get(lines.pos) {
        let Some((key, value)) = directive(line.trim_start()) else {
            break;
        };
        let number = lines.pos + 1;
        if seen.contains(&key) {
            return Err(Error::at(
                number,
                format!("only one {key} parser directive can be used"),
            ));
        }
        match key.as_str() {
            "syntax" => directives.syntax = Some(value.to_string()),
            "check" => directives.check = Some(value.to_string()),
            _ => {
                directives.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(Error::at(
                            number,
                            format!("invalid escape token '{value}' does not match ` or \\"),
                        ))
                    }
                }
            }
        }
        seen.push(key);
        lines.pos += 1;
    }
    Ok(directives)
}

fn directive(line: &str) -> Option<(String, &str)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let key_len = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let key = &rest[..key_len];
    if !key.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest[key_len..].trim_start().strip_prefix('=')?.trim();
    let key = key.to_ascii_lowercase();
    (!value.is_empty() && matches!(key.as_str(), "syntax" | "escape" | "check"))
        .then_some((key, value))
}

/// Strips a trailing escape character (and blanks after it) that continues the line. An
/// escaped escape character (`\\` at the end) does not continue it, as in BuildKit.
fn continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(before) if !before.ends_with(escape) => (before, true),
        _ => (line, false),
    }
}

fn keyword_of(text: &str) -> &str {
    split_command(text).0
}

fn split_command(text: &str) -> (&str, &str) {
    let text = text.trim();
    match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], text[i..].trim_start()),
        None => (text, ""),
    }
}

/// RUN, COPY and ADD in shell form (and ONBUILD with one of them) may open here-documents.
fn heredoc_capable(text: &str, outer: bool) -> bool {
    let (keyword, rest) = split_command(text);
    match keyword.to_ascii_lowercase().as_str() {
        "run" | "copy" | "add" => !matches!(json_array(extract_flags(rest).1), Json::Strings(_)),
        "onbuild" if outer => heredoc_capable(rest, false),
        _ => false,
    }
}

/// `<<EOF`, `<<-EOF`, `<<"EOF"`, `3<<EOF` words of a line: (delimiter, expand, chomp).
fn heredoc_markers(text: &str) -> Vec<(String, bool, bool)> {
    raw_words(text)
        .unwrap_or_default()
        .iter()
        .filter_map(|w| heredoc_marker(w))
        .collect()
}

fn heredoc_marker(word: &str) -> Option<(String, bool, bool)> {
    let rest = word
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let (name, expand) = heredoc_delimiter(rest)?;
    Some((name, expand, chomp))
}

enum Json {
    Strings(Vec<String>),
    NotStrings,
    No,
}

/// The exec form: a JSON array of strings. Text that is not valid JSON is the shell form,
/// as Docker has it; valid JSON with something other than strings is an error.
fn json_array(args: &str) -> Json {
    let args = args.trim_start();
    if !args.starts_with('[') {
        return Json::No;
    }
    match serde_json::from_str::<serde_json::Value>(args) {
        Ok(serde_json::Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Some(s),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map_or(Json::NotStrings, Json::Strings),
        _ => Json::No,
    }
}

const NOT_STRINGS: &str = "when using JSON array syntax, arrays must be comprised of strings only";

/// Leading `--flag[=value]` words, with quotes removed and `\` escaping as in BuildKit's
/// `extractBuilderFlags`; a lone `--` ends them.
fn extract_flags(rest: &str) -> (Vec<String>, &str) {
    let mut flags = Vec::new();
    let mut s = rest.trim_start();
    while s.starts_with("--") {
        let mut word = String::new();
        let mut quote = None;
        let mut end = s.len();
        let mut chars = s.char_indices();
        while let Some((i, c)) = chars.next() {
            match quote {
                Some(q) if c == q => quote = None,
                None if c.is_whitespace() => {
                    end = i;
                    break;
                }
                None if c == '\'' || c == '"' => quote = Some(c),
                _ if c == '\\' => word.extend(chars.next().map(|(_, n)| n)),
                _ => word.push(c),
            }
        }
        s = s[end..].trim_start();
        if word == "--" {
            break;
        }
        flags.push(word);
    }
    (flags, s)
}

struct Flags {
    line: usize,
    items: Vec<(String, Option<String>)>,
}

impl Flags {
    fn new(words: Vec<String>, allowed: &[&str], line: usize) -> Result<Flags, Error> {
        let mut items = Vec::new();
        for word in words {
            let body = word.strip_prefix("--").unwrap_or(&word);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            if !allowed.contains(&name) {
                return Err(Error::at(line, format!("unknown flag: --{name}")));
            }
            items.push((name.to_string(), value));
        }
        Ok(Flags { line, items })
    }

    fn all(&self, name: &str) -> Vec<&Option<String>> {
        self.items
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect()
    }

    fn string(&self, name: &str) -> Result<Option<String>, Error> {
        match self.all(name).as_slice() {
            [] => Ok(None),
            [Some(v)] => Ok(Some(v.clone())),
            [None] => Err(Error::at(
                self.line,
                format!("missing a value on flag: --{name}"),
            )),
            _ => Err(Error::at(
                self.line,
                format!("duplicate flag specified: --{name}"),
            )),
        }
    }

    fn strings(&self, name: &str) -> Result<Vec<String>, Error> {
        self.all(name)
            .into_iter()
            .map(|v| {
                v.clone().ok_or_else(|| {
                    Error::at(self.line, format!("missing a value on flag: --{name}"))
                })
            })
            .collect()
    }

    fn bool(&self, name: &str) -> Result<bool, Error> {
        match self.all(name).as_slice() {
            [] => Ok(false),
            [None] => Ok(true),
            [Some(v)] if v.eq_ignore_ascii_case("true") => Ok(true),
            [Some(v)] if v.eq_ignore_ascii_case("false") => Ok(false),
            [Some(v)] => Err(Error::at(
                self.line,
                format!("expecting boolean value for flag --{name}, not: {v}"),
            )),
            _ => Err(Error::at(
                self.line,
                format!("duplicate flag specified: --{name}"),
            )),
        }
    }
}

/// Words as BuildKit's `parseWords` splits ENV, LABEL and ARG: on whitespace outside quotes,
/// with the quotes and escapes kept for expansion to remove.
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut blank_ok = false;
    let mut quote: Option<char> = None;
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
            }
            None if c == escape => {
                if let Some(n) = chars.next() {
                    word.push(c);
                    word.push(n);
                }
            }
            Some(q) if c == escape && q != '\'' => match chars.next() {
                Some(n) => {
                    word.push(c);
                    word.push(n);
                }
                None => quote = None,
            },
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                blank_ok = true;
                word.push(c);
            }
            Some(q) if c == q => {
                quote = None;
                word.push(c);
            }
            _ => word.push(c),
        }
    }
    if blank_ok || !word.is_empty() {
        words.push(word);
    }
    words
}

enum Parsed {
    From(From, Option<String>),
    Other(Kind),
}

fn instruction(
    text: &str,
    line: usize,
    heredocs: Vec<Heredoc>,
    escape: char,
    warnings: &mut Vec<String>,
    in_onbuild: bool,
) -> Result<Parsed, Error> {
    let (keyword, rest) = split_command(text);
    let (flag_words, args) = extract_flags(rest);
    let lower = keyword.to_ascii_lowercase();
    let upper = keyword.to_ascii_uppercase();
    let allowed: &[&str] = match lower.as_str() {
        "from" => &["platform"],
        "run" => &["mount", "network", "security"],
        "copy" => &["from", "chown", "chmod", "link", "parents", "exclude"],
        "add" => &[
            "chown",
            "chmod",
            "link",
            "keep-git-dir",
            "checksum",
            "exclude",
        ],
        "healthcheck" => &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
        _ => &[],
    };
    let at = |m: String| Error::at(line, m);
    let flags = Flags::new(flag_words, allowed, line)?;
    let kind = match lower.as_str() {
        "from" => {
            let words: Vec<&str> = args.split_whitespace().collect();
            let (image, name) = match words.as_slice() {
                [image] => (*image, None),
                [image, as_, name] if as_.eq_ignore_ascii_case("as") => (*image, Some(stage_name(name).map_err(at)?)),
                _ => return Err(at("FROM requires either one or three arguments: FROM <image> [AS <name>]".into())),
            };
            let from = From { image: image.to_string(), platform: flags.string("platform")?, line };
            return Ok(Parsed::From(from, name));
        }
        "arg" => {
            let words = parse_words(args, escape);
            if words.is_empty() {
                return Err(at("ARG requires at least one argument".into()));
            }
            let decls = words
                .into_iter()
                .map(|w| match w.split_once('=') {
                    Some(("", _)) => Err(at("ARG names can not be blank".into())),
                    Some((k, v)) => Ok(ArgDecl { name: k.to_string(), default: Some(v.to_string()) }),
                    None => Ok(ArgDecl { name: w, default: None }),
                })
                .collect::<Result<_, _>>()?;
            Kind::Arg(decls)
        }
        "env" => Kind::Env(name_values(args, "ENV", escape, line, warnings)?),
        "label" => Kind::Label(name_values(args, "LABEL", escape, line, warnings)?),
        "run" => Kind::Run(run(args, &flags, heredocs, line)?),
        "copy" | "add" => {
            let copy = copy(args, &flags, heredocs, &upper, lower == "add", line)?;
            if lower == "add" { Kind::Add(copy) } else { Kind::Copy(copy) }
        }
        "workdir" | "user" | "stopsignal" | "maintainer" => {
            if args.is_empty() {
                return Err(at(format!("{upper} requires exactly one argument")));
            }
            let arg = args.to_string();
            match lower.as_str() {
                "workdir" => Kind::Workdir(arg),
                "user" => Kind::User(arg),
                "stopsignal" => Kind::Stopsignal(arg),
                _ => {
                    warnings.push(format!(
                        "Dockerfile:{line}: MAINTAINER is deprecated: use LABEL org.opencontainers.image.authors=\"...\""
                    ));
                    Kind::Maintainer(arg)
                }
            }
        }
        "expose" => {
            let ports: Vec<String> = args.split_whitespace().map(String::from).collect();
            if ports.is_empty() {
                return Err(at("EXPOSE requires at least one argument".into()));
            }
            Kind::Expose(ports)
        }
        "volume" => {
            let volumes = match json_array(args) {
                Json::Strings(v) => v,
                Json::NotStrings => return Err(at(NOT_STRINGS.into())),
                Json::No => args.split_whitespace().map(String::from).collect(),
            };
            if volumes.is_empty() {
                return Err(at("VOLUME requires at least one argument".into()));
            }
            if volumes.iter().any(|v| v.trim().is_empty()) {
                return Err(at("VOLUME specified can not be an empty string".into()));
            }
            Kind::Volume(volumes.into_iter().map(|v| v.trim().to_string()).collect())
        }
        "cmd" => Kind::Cmd(command(args).map_err(at)?),
        "entrypoint" => Kind::Entrypoint(command(args).map_err(at)?),
        "shell" => match json_array(args) {
            Json::Strings(v) if v.is_empty() => return Err(at("SHELL requires at least one argument".into())),
            Json::Strings(v) => Kind::Shell(v),
            Json::NotStrings => return Err(at(NOT_STRINGS.into())),
            Json::No => return Err(at("SHELL requires the arguments to be in JSON form, e.g. SHELL [\"/bin/bash\", \"-c\"]".into())),
        },
        "healthcheck" => Kind::Healthcheck(healthcheck(args, &flags, line)?),
        "onbuild" if !in_onbuild => {
            let trigger = keyword_of(args).to_ascii_uppercase();
            match trigger.as_str() {
                "" => return Err(at("ONBUILD requires at least one argument".into())),
                "ONBUILD" => return Err(at("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into())),
                "FROM" | "MAINTAINER" => return Err(at(format!("{trigger} isn't allowed as an ONBUILD trigger"))),
                _ => {}
            }
            let mut text = args.to_string();
            for doc in &heredocs {
                text.push('\n');
                text.push_str(&doc.content);
                text.push_str(&doc.name);
            }
            instruction(args, line, heredocs, escape, &mut Vec::new(), true)?;
            Kind::Onbuild(text)
        }
        _ => return Err(at(format!("unknown instruction: {upper}"))),
    };
    Ok(Parsed::Other(kind))
}

/// Stage names are matched case-insensitively and must not look like a stage index.
fn stage_name(name: &str) -> Result<String, String> {
    let lower = name.to_lowercase();
    let mut chars = lower.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(lower)
    } else {
        Err(format!("invalid name for build stage: {name:?}, name can't start with a number or contain symbols"))
    }
}

/// ENV and LABEL: `K=V K2="v 2"` pairs, or the legacy `K V` with the rest of the line as
/// the value (chosen by whether the first word has an `=`, as in BuildKit).
fn name_values(
    args: &str,
    keyword: &str,
    escape: char,
    line: usize,
    warnings: &mut Vec<String>,
) -> Result<Vec<(String, String)>, Error> {
    let words = parse_words(args, escape);
    let Some(first) = words.first() else {
        return Err(Error::at(
            line,
            format!("{keyword} requires at least one argument"),
        ));
    };
    if !first.contains('=') {
        let (key, value) = split_command(args);
        if value.is_empty() {
            return Err(Error::at(
                line,
                format!("{keyword} must have two arguments"),
            ));
        }
        warnings.push(format!(
            "Dockerfile:{line}: legacy \"{keyword} key value\" form: \"{keyword} key=value\" is the one Docker recommends"
        ));
        return Ok(vec![(key.to_string(), value.to_string())]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err(Error::at(line, format!("{keyword} names can not be blank"))),
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(Error::at(
                line,
                format!("Syntax error - can't find = in {w:?}. Must be of the form: name=value"),
            )),
        })
        .collect()
}

fn command(args: &str) -> Result<Command, String> {
    match json_array(args) {
        Json::Strings(v) => Ok(Command::Exec(v)),
        Json::NotStrings => Err(NOT_STRINGS.into()),
        Json::No => Ok(Command::Shell(args.to_string())),
    }
}

fn run(args: &str, flags: &Flags, heredocs: Vec<Heredoc>, line: usize) -> Result<Run, Error> {
    let network = flags.string("network")?;
    if let Some(n) = network
        .as_deref()
        .filter(|n| !matches!(*n, "default" | "none" | "host"))
    {
        return Err(Error::at(
            line,
            format!("unsupported network mode {n:?} (default, none or host)"),
        ));
    }
    let security = flags.string("security")?;
    if let Some(s) = security
        .as_deref()
        .filter(|s| !matches!(*s, "sandbox" | "insecure"))
    {
        return Err(Error::at(
            line,
            format!("unsupported security mode {s:?} (sandbox or insecure)"),
        ));
    }
    let mounts = flags.strings("mount")?;
    for m in mounts.iter().filter(|m| !m.contains('$')) {
        parse_mount(m).map_err(|e| e.on_line(line))?;
    }
    let command = match heredocs.as_slice() {
        [] if args.is_empty() => return Err(Error::at(line, "RUN requires at least one argument")),
        [] => command(args).map_err(|m| Error::at(line, m))?,
        [doc] if heredoc_marker(args).is_some() => Command::Shell(doc.content.clone()),
        docs => {
            let mut script = args.to_string();
            for doc in docs {
                script.push('\n');
                script.push_str(&doc.content);
                script.push_str(&doc.name);
            }
            Command::Shell(script)
        }
    };
    Ok(Run {
        command,
        mounts,
        network,
        security,
        heredocs,
    })
}

fn copy(
    args: &str,
    flags: &Flags,
    mut heredocs: Vec<Heredoc>,
    keyword: &str,
    add: bool,
    line: usize,
) -> Result<Copy, Error> {
    let json = match json_array(args) {
        Json::Strings(v) => Some(v),
        Json::NotStrings => return Err(Error::at(line, NOT_STRINGS)),
        Json::No => None,
    };
    let mut words = json.unwrap_or_else(|| args.split_whitespace().map(String::from).collect());
    let dest = match words.pop() {
        Some(dest) if !words.is_empty() => dest,
        _ => {
            return Err(Error::at(
                line,
                format!("{keyword} requires at least two arguments, but only one was provided. Destination could not be determined"),
            ))
        }
    };
    if !heredocs.is_empty() && heredoc_marker(&dest).is_some() {
        return Err(Error::at(
            line,
            format!("{keyword} cannot accept a heredoc as a destination"),
        ));
    }
    let mut sources = Vec::new();
    let mut docs = heredocs.drain(..);
    let mut used = Vec::new();
    for word in words {
        match heredoc_marker(&word).and_then(|_| docs.next()) {
            Some(doc) => used.push(Heredoc {
                destination: Some(dest.clone()),
                ..doc
            }),
            None => sources.push(word),
        }
    }
    Ok(Copy {
        sources,
        dest,
        from: if add { None } else { flags.string("from")? },
        chown: flags.string("chown")?,
        chmod: flags.string("chmod")?,
        link: flags.bool("link")?,
        parents: !add && flags.bool("parents")?,
        exclude: flags.strings("exclude")?,
        checksum: if add { flags.string("checksum")? } else { None },
        keep_git_dir: add && flags.bool("keep-git-dir")?,
        heredocs: used,
    })
}

fn healthcheck(args: &str, flags: &Flags, line: usize) -> Result<Healthcheck, Error> {
    let (kind, rest) = split_command(args);
    let at = |m: String| Error::at(line, m);
    match kind.to_ascii_uppercase().as_str() {
        "" => Err(at("HEALTHCHECK requires at least one argument".into())),
        "NONE" if !rest.is_empty() || !flags.items.is_empty() => {
            Err(at("HEALTHCHECK NONE takes no arguments".into()))
        }
        "NONE" => Ok(Healthcheck::default()),
        "CMD" => {
            let command = command(rest).map_err(at)?;
            if matches!(&command, Command::Exec(v) if v.is_empty()) || rest.is_empty() {
                return Err(at("Missing command after HEALTHCHECK CMD".into()));
            }
            let interval = |name: &str| -> Result<Option<Duration>, Error> {
                match flags.string(name)? {
                    None => Ok(None),
                    Some(v) => match go_duration(&v) {
                        Some(d) if d.is_zero() => Ok(None),
                        Some(d) if d >= Duration::from_millis(1) => Ok(Some(d)),
                        Some(_) => Err(at(format!("Interval {name:?} cannot be less than 1ms"))),
                        None if v.starts_with('-') => {
                            Err(at(format!("Interval {name:?} cannot be less than 1ms")))
                        }
                        None => Err(at(format!(
                            "invalid duration {v:?} for --{name} (e.g. 30s, 1m30s)"
                        ))),
                    },
                }
            };
            let retries = match flags.string("retries")? {
                None => None,
                Some(v) => match v.parse::<i64>() {
                    Ok(n) if n < 1 => {
                        return Err(at(format!("--retries must be at least 1 (not {n})")))
                    }
                    Ok(n) => Some(
                        u32::try_from(n).map_err(|_| at(format!("--retries {n} is too large")))?,
                    ),
                    Err(_) => return Err(at(format!("invalid --retries {v:?}: not a number"))),
                },
            };
            Ok(Healthcheck {
                command: Some(command),
                interval: interval("interval")?,
                timeout: interval("timeout")?,
                start_period: interval("start-period")?,
                start_interval: interval("start-interval")?,
                retries,
            })
        }
        other => Err(at(format!(
            "Unknown type {other:?} in HEALTHCHECK (try CMD)"
        ))),
    }
}

/// Go's `time.ParseDuration` (`1m30s`, `1.5h`, `300ms`, `0`), which Docker uses for
/// HEALTHCHECK's intervals. None for syntax errors and negative durations.
fn go_duration(s: &str) -> Option<Duration> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let mut rest = s;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => a.split_at(a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len())),
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        nanos = nanos.checked_add(whole.checked_mul(scale)?)?;
        let mut divisor: u128 = 1;
        let mut part: u128 = 0;
        for d in frac.chars().take(18) {
            part = part * 10 + u128::from(d.to_digit(10)?);
            divisor *= 10;
        }
        nanos = nanos.checked_add(part.checked_mul(scale)? / divisor)?;
        rest = after;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}
