//! Dockerfiles for `hk build`: parsing into stages and instructions, and the variable
//! expansion Docker applies to them.
//!
//! Hand-written rather than the `dockerfile-parser` crate (0.9): its pest grammar hard-codes
//! `\` as the line continuation (no `# escape=` directive; parser directives are not read at
//! all), has no rule for here-documents, so the body of a `RUN <<EOF` is parsed as
//! instructions, and it turns ONBUILD, HEALTHCHECK, SHELL, ... and misspelt instructions into
//! an untyped "misc" instruction instead of an error. BuildKit's flags (`RUN --mount`,
//! `COPY --link`, ...) would have to be re-parsed out of its strings anyway.
//!
//! The rules follow BuildKit's frontend (`parser/parser.go`, `parser/line_parsers.go`,
//! `instructions/parse.go`, `shell/lex.go`), quirks included where a Dockerfile that builds
//! with `docker build` depends on them: invalid JSON falls back to the shell form, comment
//! lines inside a continued instruction are dropped, `ENV K V` is one pair with the rest of
//! the line as its value.
//!
//! Parsing keeps arguments raw (quotes and `$VAR`s as written); [`Instruction::expand`]
//! substitutes the ARG/ENV state the executor has reached at that instruction, since that
//! state changes as a stage runs.

mod mount;
mod parse;
mod words;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use mount::{parse_mount, MountType, RunMount, Sharing};
pub use parse::parse;
pub use words::{expand_word, expand_words, Vars, MAX_EXPANDED};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Something wrong at a line of the Dockerfile (1-based, the instruction's first line).
    #[error("Dockerfile:{line}: {message}")]
    Syntax { line: usize, message: String },
    /// The Dockerfile as a whole gives nothing to build.
    #[error("Dockerfile: {0}")]
    Empty(String),
    /// Expanding a word outside any instruction (the executor knows where it came from).
    #[error("{0}")]
    Expand(String),
    /// A `RUN --mount` value BuildKit would refuse.
    #[error("invalid --mount: {0}")]
    Mount(String),
}

impl Error {
    pub(crate) fn at(line: usize, message: impl Into<String>) -> Self {
        Error::Syntax {
            line,
            message: message.into(),
        }
    }

    /// Gives an error from expanding or from a mount the line of the instruction it is in.
    pub(crate) fn on_line(self, line: usize) -> Self {
        match self {
            Error::Expand(m) => Error::at(line, m),
            Error::Mount(m) => Error::at(line, format!("invalid --mount: {m}")),
            other => other,
        }
    }

    pub fn line(&self) -> Option<usize> {
        match self {
            Error::Syntax { line, .. } => Some(*line),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub directives: Directives,
    /// ARGs before the first FROM: visible to FROM lines, and inside a stage only after
    /// an `ARG NAME` there re-declares them.
    pub global_args: Vec<ArgDecl>,
    pub stages: Vec<Stage>,
    /// Things Docker warns about but builds anyway; the executor prints them.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// The frontend image a `# syntax=` line asks for; hk has one built-in frontend, so the
    /// executor can only tell the user it is not used.
    pub syntax: Option<String>,
    /// `\` unless `# escape=\``; it is both the line continuation and the escape character
    /// in expansion, so the executor passes it to [`Instruction::expand`].
    pub escape: char,
    /// `# check=`: BuildKit's lint configuration, kept but not acted on.
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            syntax: None,
            escape: '\\',
            check: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub index: usize,
    /// The `AS` name, lowercased: stage references (`COPY --from`, `FROM name`) are
    /// case-insensitive.
    pub name: Option<String>,
    pub from: From,
    pub instructions: Vec<Instruction>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    /// As written; [`From::expand`] substitutes the global ARGs, the only ones in scope.
    pub image: String,
    pub platform: Option<String>,
    pub line: usize,
}

impl From {
    /// The image and platform with the global args (plus whatever the executor adds, such
    /// as BUILDPLATFORM) substituted.
    pub fn expand(&self, vars: &Vars, escape: char) -> Result<From, Error> {
        let platform = self
            .platform
            .as_deref()
            .map(|p| expand_word(p, vars, escape))
            .transpose();
        Ok(From {
            image: expand_word(&self.image, vars, escape).map_err(|e| e.on_line(self.line))?,
            platform: platform.map_err(|e| e.on_line(self.line))?,
            line: self.line,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub line: usize,
    /// The instruction as written with its continuation lines joined (comments between them
    /// dropped, here-document bodies not included): for history's `created_by` and progress
    /// lines.
    pub text: String,
    /// Raw arguments; see [`Instruction::expand`].
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Arg(Vec<ArgDecl>),
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Run(Run),
    Copy(Copy),
    Add(Copy),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    Entrypoint(Command),
    Cmd(Command),
    Shell(Vec<String>),
    Stopsignal(String),
    Healthcheck(Healthcheck),
    /// The trigger as written (here-document bodies appended, so that [`parse`] reads it
    /// back whole when a child image's build fires it); already checked to parse and not
    /// to be ONBUILD, FROM or MAINTAINER.
    Onbuild(String),
    Maintainer(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    /// Raw: quotes removed and variables substituted by expansion.
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// JSON form: run as is, no shell.
    Exec(Vec<String>),
    /// Shell form: given to the SHELL (`/bin/sh -c` by default) as one argument.
    Shell(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// For `RUN <<EOF` alone, the here-document's body (the script); for a command that
    /// also has here-documents (`RUN python3 <<EOF`), the command line with the bodies
    /// and delimiters appended, for the shell to read them, as BuildKit does.
    pub command: Command,
    /// Raw `--mount` values, for [`parse_mount`] after expansion.
    pub mounts: Vec<String>,
    /// `default`, `none` or `host` (checked).
    pub network: Option<String>,
    /// `sandbox` or `insecure` (checked).
    pub security: Option<String>,
    pub heredocs: Vec<Heredoc>,
}

impl Run {
    /// The here-document of a `RUN <<EOF` whose body starts with `#!`: BuildKit writes it to
    /// a file and executes that (so the `#!` line picks the interpreter) instead of giving
    /// it to the shell.
    pub fn shebang_script(&self) -> Option<&Heredoc> {
        match (&self.command, self.heredocs.as_slice()) {
            (Command::Shell(script), [doc])
                if *script == doc.content && doc.content.starts_with("#!") =>
            {
                Some(doc)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter with quotes removed; for COPY/ADD also the name of the file made.
    pub name: String,
    /// Every line up to the delimiter, each ending in `\n`; leading tabs already removed
    /// when `chomp_tabs`.
    pub content: String,
    /// False when the delimiter was quoted (`<<"EOF"`, `<<'EOF'`): the body is literal.
    pub expand: bool,
    /// `<<-EOF`.
    pub chomp_tabs: bool,
    /// For COPY/ADD, the raw destination the file is copied to; None for RUN.
    pub destination: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Copy {
    /// Raw paths; here-document sources are in `heredocs` instead.
    pub sources: Vec<String>,
    pub dest: String,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<String>,
    /// ADD only.
    pub checksum: Option<String>,
    /// ADD only.
    pub keep_git_dir: bool,
    pub heredocs: Vec<Heredoc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Healthcheck {
    /// None for `HEALTHCHECK NONE` (switches off a base image's check).
    pub command: Option<Command>,
    /// None when not given (or given as 0): Docker's default applies.
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub start_interval: Option<Duration>,
    pub retries: Option<u32>,
}

impl Instruction {
    /// The instruction with variables substituted where Docker substitutes them: ADD and
    /// COPY (sources, dest, --from, --chown, --chmod, --checksum, --exclude, and the bodies
    /// of here-documents with unquoted delimiters), ARG (names and defaults), ENV and LABEL
    /// (keys and values), EXPOSE (split into words), RUN's --mount values, STOPSIGNAL,
    /// USER, VOLUME, WORKDIR. The commands of RUN, CMD, ENTRYPOINT, SHELL and HEALTHCHECK
    /// are left to the shell, and so are RUN here-documents; ONBUILD and MAINTAINER are
    /// left alone. Errors name this instruction's line.
    ///
    /// `vars` is the state before this instruction: in `ENV A=1 B=$A`, B gets the A from
    /// before the line, as in Docker; the executor applies the result afterwards. COPY/ADD
    /// here-document bodies are expanded like an unquoted shell here-document (only `$` and
    /// the escape of `$` and `\` are special), where BuildKit runs them through its word
    /// lexer.
    pub fn expand(&self, vars: &Vars, escape: char) -> Result<Kind, Error> {
        self.expand_kind(vars, escape)
            .map_err(|e| e.on_line(self.line))
    }

    fn expand_kind(&self, vars: &Vars, escape: char) -> Result<Kind, Error> {
        let word = |s: &str| expand_word(s, vars, escape);
        let opt = |s: &Option<String>| s.as_deref().map(word).transpose();
        let pairs = |pairs: &[(String, String)]| -> Result<Vec<(String, String)>, Error> {
            pairs
                .iter()
                .map(|(k, v)| Ok((word(k)?, word(v)?)))
                .collect()
        };
        let list = |items: &[String]| items.iter().map(|s| word(s)).collect::<Result<Vec<_>, _>>();
        let kind = match &self.kind {
            Kind::Arg(args) => Kind::Arg(
                args.iter()
                    .map(|a| {
                        Ok(ArgDecl {
                            name: word(&a.name)?,
                            default: opt(&a.default)?,
                        })
                    })
                    .collect::<Result<_, Error>>()?,
            ),
            Kind::Env(p) => Kind::Env(pairs(p)?),
            Kind::Label(p) => Kind::Label(pairs(p)?),
            Kind::Run(run) => Kind::Run(Run {
                mounts: list(&run.mounts)?,
                ..run.clone()
            }),
            Kind::Copy(c) => Kind::Copy(expand_copy(c, vars, escape)?),
            Kind::Add(c) => Kind::Add(expand_copy(c, vars, escape)?),
            Kind::Workdir(s) => Kind::Workdir(word(s)?),
            Kind::User(s) => Kind::User(word(s)?),
            Kind::Stopsignal(s) => Kind::Stopsignal(word(s)?),
            Kind::Volume(v) => Kind::Volume(list(v)?),
            Kind::Expose(ports) => {
                let mut out = Vec::new();
                for p in ports {
                    out.extend(expand_words(p, vars, escape)?);
                }
                Kind::Expose(out)
            }
            other => other.clone(),
        };
        Ok(kind)
    }
}

fn expand_copy(c: &Copy, vars: &Vars, escape: char) -> Result<Copy, Error> {
    let word = |s: &str| expand_word(s, vars, escape);
    let opt = |s: &Option<String>| s.as_deref().map(word).transpose();
    let heredocs = c
        .heredocs
        .iter()
        .map(|h| {
            let content = if h.expand {
                words::expand_heredoc(&h.content, vars)?
            } else {
                h.content.clone()
            };
            Ok(Heredoc {
                content,
                destination: opt(&h.destination)?,
                ..h.clone()
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(Copy {
        sources: c
            .sources
            .iter()
            .map(|s| word(s))
            .collect::<Result<_, _>>()?,
        dest: word(&c.dest)?,
        from: opt(&c.from)?,
        chown: opt(&c.chown)?,
        chmod: opt(&c.chmod)?,
        checksum: opt(&c.checksum)?,
        exclude: c
            .exclude
            .iter()
            .map(|s| word(s))
            .collect::<Result<_, _>>()?,
        heredocs,
        ..c.clone()
    })
}
