//! Parser and instruction-expansion tests; the lexer and mount parser test themselves.

use std::time::Duration;

use super::*;

fn p(text: &str) -> Dockerfile {
    parse(text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
}

fn perr(text: &str) -> String {
    match parse(text) {
        Ok(d) => panic!("parsed: {d:?}"),
        Err(e) => e.to_string(),
    }
}

/// The kinds of the first stage's instructions.
fn kinds(text: &str) -> Vec<Kind> {
    p(text).stages[0]
        .instructions
        .iter()
        .map(|i| i.kind.clone())
        .collect()
}

fn one(text: &str) -> Kind {
    let mut k = kinds(&format!("FROM scratch\n{text}"));
    assert_eq!(k.len(), 1, "{k:?}");
    k.remove(0)
}

fn run_of(text: &str) -> Run {
    match one(text) {
        Kind::Run(r) => r,
        other => panic!("{other:?}"),
    }
}

fn copy_of(text: &str) -> Copy {
    match one(text) {
        Kind::Copy(c) | Kind::Add(c) => c,
        other => panic!("{other:?}"),
    }
}

fn vars(pairs: &[(&str, &str)]) -> Vars {
    pairs.iter().copied().collect()
}

fn expanded(text: &str, v: &Vars) -> Kind {
    let d = p(&format!("FROM scratch\n{text}"));
    d.stages[0].instructions[0]
        .expand(v, d.directives.escape)
        .unwrap()
}

#[test]
fn directives_are_read_at_the_top_only() {
    let d = p("# Syntax = docker/dockerfile:1.7\n#ESCAPE=`\n# check=skip=all\nFROM scratch\n");
    assert_eq!(
        d.directives.syntax.as_deref(),
        Some("docker/dockerfile:1.7")
    );
    assert_eq!(d.directives.escape, '`');
    assert_eq!(d.directives.check.as_deref(), Some("skip=all"));

    for text in [
        "# a comment\n# escape=`\nFROM scratch\n",
        "\n# escape=`\nFROM scratch\n",
        "# unknown=1\n# escape=`\nFROM scratch\n",
        "FROM scratch\n# escape=`\n",
    ] {
        assert_eq!(p(text).directives, Directives::default(), "{text}");
    }
}

#[test]
fn repeated_or_invalid_directives_are_errors() {
    assert_eq!(
        perr("# syntax=a\n# SYNTAX=b\nFROM scratch\n"),
        "Dockerfile:2: only one syntax parser directive can be used"
    );
    assert!(
        perr("# escape=x\nFROM scratch\n").starts_with("Dockerfile:1: invalid escape token 'x'")
    );
}

#[test]
fn backtick_escape_changes_continuation_and_escapes() {
    let d = p("# escape=`\nFROM scratch\nRUN dir C:\\ `\n  && echo done\nWORKDIR C:\\app\\$DIR\n");
    let ins = &d.stages[0].instructions;
    assert_eq!(
        ins[0].kind,
        Kind::Run(Run {
            command: Command::Shell("dir C:\\   && echo done".into()),
            ..run_base()
        })
    );
    let v = vars(&[("DIR", "x")]);
    assert_eq!(
        ins[1].expand(&v, '`').unwrap(),
        Kind::Workdir("C:\\app\\x".into())
    );
    // With the default escape a trailing backslash continues the line.
    assert_eq!(
        one("RUN a \\\n b"),
        Kind::Run(Run {
            command: Command::Shell("a  b".into()),
            ..run_base()
        })
    );
}

fn run_base() -> Run {
    Run {
        command: Command::Shell(String::new()),
        mounts: vec![],
        network: None,
        security: None,
        heredocs: vec![],
    }
}

#[test]
fn comments_inside_continuations_are_dropped_and_hash_mid_line_is_text() {
    let d = p("FROM scratch\n# top\nRUN apt-get update \\\n# explain\n    # indented comment\n    && apt-get install -y x # not a comment\n");
    let i = &d.stages[0].instructions[0];
    assert_eq!(i.line, 3);
    assert_eq!(
        i.text,
        "RUN apt-get update     && apt-get install -y x # not a comment"
    );
    assert!(d.warnings.is_empty());
}

#[test]
fn empty_continuation_lines_warn() {
    let d = p("FROM scratch\nRUN a \\\n\n  b\n");
    assert_eq!(d.stages[0].instructions[0].text, "RUN a   b");
    assert_eq!(d.warnings.len(), 1);
    assert!(
        d.warnings[0].starts_with("Dockerfile:2: empty continuation line"),
        "{:?}",
        d.warnings
    );
}

#[test]
fn an_escaped_escape_does_not_continue_the_line() {
    let k = kinds("FROM scratch\nRUN echo \\\\\nRUN b\n");
    assert_eq!(k.len(), 2);
    assert_eq!(
        k[0],
        Kind::Run(Run {
            command: Command::Shell("echo \\\\".into()),
            ..run_base()
        })
    );
}

#[test]
fn instructions_are_case_insensitive_and_crlf_and_bom_are_accepted() {
    let d = p("\u{feff}from alpine As Build\r\nrUn echo hi\r\nworkdir /x\r\n");
    assert_eq!(d.stages[0].name.as_deref(), Some("build"));
    assert_eq!(d.stages[0].from.image, "alpine");
    let k: Vec<_> = d.stages[0]
        .instructions
        .iter()
        .map(|i| i.kind.clone())
        .collect();
    assert_eq!(
        k[0],
        Kind::Run(Run {
            command: Command::Shell("echo hi".into()),
            ..run_base()
        })
    );
    assert_eq!(k[1], Kind::Workdir("/x".into()));
}

#[test]
fn json_exec_form_and_shell_fallback() {
    assert_eq!(
        one(r#"CMD ["echo", "a b", "\u00e9\n"]"#),
        Kind::Cmd(Command::Exec(vec![
            "echo".into(),
            "a b".into(),
            "é\n".into()
        ]))
    );
    assert_eq!(
        one("ENTRYPOINT []"),
        Kind::Entrypoint(Command::Exec(vec![]))
    );
    assert_eq!(
        one("CMD [\"a\", 'b']"),
        Kind::Cmd(Command::Shell("[\"a\", 'b']".into()))
    );
    assert_eq!(
        one("CMD [not json"),
        Kind::Cmd(Command::Shell("[not json".into()))
    );
    assert_eq!(
        one("ENTRYPOINT exec nginx -g 'daemon off;'"),
        Kind::Entrypoint(Command::Shell("exec nginx -g 'daemon off;'".into()))
    );
    assert!(
        perr("FROM scratch\nCMD [\"a\", 1]\n").contains("arrays must be comprised of strings only")
    );
    assert_eq!(
        run_of("RUN [\"/bin/true\"]").command,
        Command::Exec(vec!["/bin/true".into()])
    );
}

#[test]
fn env_and_label_forms() {
    assert_eq!(
        one("ENV PATH /usr/bin:$PATH with spaces"),
        Kind::Env(vec![("PATH".into(), "/usr/bin:$PATH with spaces".into())])
    );
    assert_eq!(
        one("ENV A=1 B=\"two words\" C='x y' D=a\\ b"),
        Kind::Env(vec![
            ("A".into(), "1".into()),
            ("B".into(), "\"two words\"".into()),
            ("C".into(), "'x y'".into()),
            ("D".into(), "a\\ b".into()),
        ])
    );
    assert_eq!(
        one("LABEL \"com.example.key\"=\"v 1\" version=1.0"),
        Kind::Label(vec![
            ("\"com.example.key\"".into(), "\"v 1\"".into()),
            ("version".into(), "1.0".into())
        ])
    );
    let d = p("FROM scratch\nLABEL maintainer someone@example.com\n");
    assert_eq!(
        d.stages[0].instructions[0].kind,
        Kind::Label(vec![("maintainer".into(), "someone@example.com".into())])
    );
    assert!(d.warnings[0].contains("legacy"));
    assert!(perr("FROM scratch\nENV A=1 B\n").contains("can't find = in \"B\""));
    assert!(perr("FROM scratch\nENV A\n").contains("ENV must have two arguments"));
    assert!(perr("FROM scratch\nENV =x\n").contains("ENV names can not be blank"));
    assert!(perr("FROM scratch\nLABEL\n").contains("LABEL requires at least one argument"));
}

#[test]
fn env_and_label_expansion_removes_quotes() {
    let v = vars(&[("HOME", "/root"), ("V", "1")]);
    assert_eq!(
        expanded("ENV A=\"$HOME/x y\" B='$HOME' C=${V:-0}.2 D=a\\ b", &v),
        Kind::Env(vec![
            ("A".into(), "/root/x y".into()),
            ("B".into(), "$HOME".into()),
            ("C".into(), "1.2".into()),
            ("D".into(), "a b".into()),
        ])
    );
    assert_eq!(
        expanded("ENV P $HOME/bin and \"more\"", &v),
        Kind::Env(vec![("P".into(), "/root/bin and more".into())])
    );
    assert_eq!(
        expanded("LABEL \"a b\"=\"$V\"", &v),
        Kind::Label(vec![("a b".into(), "1".into())])
    );
}

#[test]
fn args_with_and_without_defaults_and_global_args() {
    let d = p("ARG BASE=alpine:3.20\nARG A B=\"x y\" C=\nFROM ${BASE}\nARG BASE\n");
    let names: Vec<_> = d
        .global_args
        .iter()
        .map(|a| (a.name.as_str(), a.default.as_deref()))
        .collect();
    assert_eq!(
        names,
        [
            ("BASE", Some("alpine:3.20")),
            ("A", None),
            ("B", Some("\"x y\"")),
            ("C", Some(""))
        ]
    );
    assert_eq!(
        d.stages[0].instructions[0].kind,
        Kind::Arg(vec![ArgDecl {
            name: "BASE".into(),
            default: None
        }])
    );
    let globals: Vars = [("BASE", "alpine:3.20")].into_iter().collect();
    assert_eq!(
        d.stages[0].from.expand(&globals, '\\').unwrap().image,
        "alpine:3.20"
    );
    assert_eq!(
        expanded("ARG X=\"$V-y\"", &vars(&[("V", "v")])),
        Kind::Arg(vec![ArgDecl {
            name: "X".into(),
            default: Some("v-y".into())
        }])
    );
    assert!(perr("FROM scratch\nARG\n").contains("ARG requires at least one argument"));
    assert!(perr("FROM scratch\nARG =1\n").contains("ARG names can not be blank"));
}

#[test]
fn from_forms_and_stage_names() {
    let d = p("FROM --platform=$BUILDPLATFORM golang:1.22 AS Builder\nFROM builder AS final-1.x\nFROM scratch\n");
    assert_eq!(d.stages.len(), 3);
    let s = &d.stages[0];
    assert_eq!(
        (s.index, s.name.as_deref(), s.from.line),
        (0, Some("builder"), 1)
    );
    assert_eq!(s.from.platform.as_deref(), Some("$BUILDPLATFORM"));
    assert_eq!(d.stages[1].name.as_deref(), Some("final-1.x"));
    assert_eq!((d.stages[2].index, d.stages[2].name.as_deref()), (2, None));
    let v = vars(&[("BUILDPLATFORM", "linux/amd64")]);
    assert_eq!(
        s.from.expand(&v, '\\').unwrap().platform.as_deref(),
        Some("linux/amd64")
    );

    assert_eq!(
        perr("FROM a AS x\nFROM b AS X\n"),
        "Dockerfile:2: duplicate stage name \"x\" (first used on line 1)"
    );
    assert!(perr("FROM a AS 1\n").contains("invalid name for build stage: \"1\""));
    assert!(perr("FROM a AS b$c\n").contains("invalid name for build stage"));
    assert!(perr("FROM a b\n").contains("FROM requires either one or three arguments"));
    assert!(perr("FROM\n").contains("FROM requires either one or three arguments"));
    assert!(perr("FROM a AS\n").contains("FROM requires either one or three arguments"));
}

#[test]
fn run_heredoc_alone_is_the_script() {
    let r = run_of("RUN <<EOF\napt-get update\n  echo \"$HOME\"\nEOF");
    assert_eq!(
        r.command,
        Command::Shell("apt-get update\n  echo \"$HOME\"\n".into())
    );
    assert_eq!(r.heredocs.len(), 1);
    let doc = &r.heredocs[0];
    assert_eq!(
        (
            doc.name.as_str(),
            doc.expand,
            doc.chomp_tabs,
            doc.destination.as_ref()
        ),
        ("EOF", true, false, None)
    );
    assert_eq!(r.shebang_script(), None);
    let r = run_of("RUN <<EOT\n#!/usr/bin/env python3\nprint(1)\nEOT");
    assert_eq!(r.shebang_script().map(|d| d.name.as_str()), Some("EOT"));
}

#[test]
fn run_heredoc_with_a_command_is_given_to_the_shell_whole() {
    let d = p("FROM scratch\nRUN python3 <<'PY' && cat <<-EOF >/out\nprint('$x')\nPY\n\thello\n\tEOF\nRUN next\n");
    let ins = &d.stages[0].instructions;
    assert_eq!(ins.len(), 2);
    assert_eq!(ins[0].text, "RUN python3 <<'PY' && cat <<-EOF >/out");
    let Kind::Run(r) = &ins[0].kind else { panic!() };
    assert_eq!(
        r.command,
        Command::Shell("python3 <<'PY' && cat <<-EOF >/out\nprint('$x')\nPY\nhello\nEOF".into())
    );
    assert_eq!(r.heredocs[0].name, "PY");
    assert!(!r.heredocs[0].expand);
    assert_eq!(
        (r.heredocs[1].name.as_str(), r.heredocs[1].content.as_str()),
        ("EOF", "hello\n")
    );
    assert!(r.heredocs[1].chomp_tabs && r.heredocs[1].expand);
    assert_eq!(ins[1].line, 7);
}

#[test]
fn heredoc_bodies_are_not_instructions_and_quoted_delimiters() {
    let d = p("FROM scratch\nRUN cat <<\"END\" >/f\nFROM nope\n# not a comment\n\nRUNN\nEND\n");
    let Kind::Run(r) = &d.stages[0].instructions[0].kind else {
        panic!()
    };
    assert_eq!(
        r.heredocs[0].content,
        "FROM nope\n# not a comment\n\nRUNN\n"
    );
    assert!(!r.heredocs[0].expand);
    assert_eq!(d.stages.len(), 1);
    // Only here-documents at the start of a word count, and not in the JSON form or in quotes.
    assert!(run_of("RUN echo a<<b").heredocs.is_empty());
    assert!(run_of("RUN echo \"<<EOF\"").heredocs.is_empty());
    assert!(run_of("RUN [\"cat\", \"<<EOF\"]").heredocs.is_empty());
    assert_eq!(
        perr("FROM scratch\nRUN cat <<EOF\nno end\n"),
        "Dockerfile:2: unterminated here-document: no line \"EOF\" ends it"
    );
}

#[test]
fn copy_heredocs_become_files_at_the_destination() {
    let c = copy_of("COPY --chmod=755 <<EOF <<-'CONF' ./local /etc/app/\n#!/bin/sh\necho $V\nEOF\n\t\tk=v\n\tCONF");
    assert_eq!(c.sources, ["./local"]);
    assert_eq!(c.dest, "/etc/app/");
    assert_eq!(c.chmod.as_deref(), Some("755"));
    let docs: Vec<_> = c
        .heredocs
        .iter()
        .map(|h| {
            (
                h.name.as_str(),
                h.content.as_str(),
                h.expand,
                h.destination.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        docs,
        [
            ("EOF", "#!/bin/sh\necho $V\n", true, Some("/etc/app/")),
            ("CONF", "k=v\n", false, Some("/etc/app/"))
        ]
    );
    assert!(perr("FROM scratch\nCOPY a <<EOF\nx\nEOF\n")
        .contains("COPY cannot accept a heredoc as a destination"));
    let c = copy_of("COPY first <<A second <<B /d/\na\nA\nb\nB");
    assert_eq!(c.sources, ["first", "second"]);
    let docs: Vec<_> = c
        .heredocs
        .iter()
        .map(|h| (h.name.as_str(), h.content.as_str()))
        .collect();
    assert_eq!(docs, [("A", "a\n"), ("B", "b\n")]);
}

#[test]
fn copy_heredoc_bodies_expand_unless_the_delimiter_is_quoted() {
    let v = vars(&[("V", "1")]);
    let Kind::Copy(c) = expanded("COPY <<A <<'B' /$V/\nv=$V \"q\" \\n\nA\nv=$V\nB", &v) else {
        panic!()
    };
    assert_eq!(c.heredocs[0].content, "v=1 \"q\" \\n\n");
    assert_eq!(c.heredocs[1].content, "v=$V\n");
    assert_eq!(c.heredocs[0].destination.as_deref(), Some("/1/"));
    assert_eq!(c.dest, "/1/");
}

#[test]
fn copy_and_add_flags() {
    let c = copy_of("COPY --from=build --chown=app:app --chmod=0644 --link --parents --exclude=*.md --exclude=.git a b /dst/");
    assert_eq!(c.from.as_deref(), Some("build"));
    assert_eq!(c.chown.as_deref(), Some("app:app"));
    assert!(c.link && c.parents);
    assert_eq!(c.exclude, ["*.md", ".git"]);
    assert_eq!(c.sources, ["a", "b"]);
    let c = copy_of(
        "ADD --checksum=sha256:abc --keep-git-dir=true --link=false https://example.com/x.tgz /x",
    );
    assert_eq!(c.checksum.as_deref(), Some("sha256:abc"));
    assert!(c.keep_git_dir && !c.link);
    let c = copy_of("COPY [\"a b\", \"/c d/\"]");
    assert_eq!(
        (c.sources, c.dest),
        (vec!["a b".to_string()], "/c d/".to_string())
    );
    assert!(perr("FROM scratch\nCOPY a\n").contains("COPY requires at least two arguments"));
    assert!(perr("FROM scratch\nADD --from=x a b\n").contains("unknown flag: --from"));
    assert!(perr("FROM scratch\nCOPY --checksum=x a b\n").contains("unknown flag: --checksum"));
    assert!(perr("FROM scratch\nCOPY --from a b\n").contains("missing a value on flag: --from"));
    assert!(perr("FROM scratch\nCOPY --from=a --from=b a b\n")
        .contains("duplicate flag specified: --from"));
    assert!(perr("FROM scratch\nCOPY --link=maybe a b\n")
        .contains("expecting boolean value for flag --link, not: maybe"));
}

#[test]
fn unknown_flags_are_errors_with_the_line() {
    assert_eq!(
        perr("FROM scratch\n\nRUN --foo echo\n"),
        "Dockerfile:3: unknown flag: --foo"
    );
    assert_eq!(
        perr("FROM --foo=1 scratch\n"),
        "Dockerfile:1: unknown flag: --foo"
    );
    assert_eq!(
        perr("FROM scratch\nWORKDIR --x /a\n"),
        "Dockerfile:2: unknown flag: --x"
    );
    assert_eq!(
        perr("FROM scratch\nHEALTHCHECK --foo=1 CMD true\n"),
        "Dockerfile:2: unknown flag: --foo"
    );
    // A lone `--` ends the flags.
    assert_eq!(
        run_of("RUN -- --not-a-flag").command,
        Command::Shell("--not-a-flag".into())
    );
}

#[test]
fn run_flags() {
    let r = run_of(
        "RUN --mount=type=cache,target=/root/.cache --mount=\"type=secret,id=tok\" --network=none --security=insecure make",
    );
    assert_eq!(
        r.mounts,
        ["type=cache,target=/root/.cache", "type=secret,id=tok"]
    );
    assert_eq!(
        (r.network.as_deref(), r.security.as_deref()),
        (Some("none"), Some("insecure"))
    );
    assert_eq!(r.command, Command::Shell("make".into()));
    assert!(perr("FROM scratch\nRUN --network=bridge x\n")
        .contains("unsupported network mode \"bridge\""));
    assert!(perr("FROM scratch\nRUN --security=x y\n").contains("unsupported security mode"));
    assert_eq!(
        perr("FROM scratch\nRUN --mount=type=cache x\n"),
        "Dockerfile:2: invalid --mount: type=cache mount requires a target (target=/path)"
    );
    assert!(perr("FROM scratch\nRUN\n").contains("RUN requires at least one argument"));
}

#[test]
fn run_mounts_expand_but_the_command_does_not() {
    let v = vars(&[("T", "/cache"), ("X", "x")]);
    let Kind::Run(r) = expanded("RUN --mount=type=cache,target=$T echo $X", &v) else {
        panic!()
    };
    assert_eq!(r.mounts, ["type=cache,target=/cache"]);
    assert_eq!(r.command, Command::Shell("echo $X".into()));
    assert_eq!(
        parse_mount(&r.mounts[0]).unwrap().target.as_deref(),
        Some("/cache")
    );
}

#[test]
fn expose_and_volume() {
    assert_eq!(
        one("EXPOSE 80/tcp 53/udp  8080"),
        Kind::Expose(vec!["80/tcp".into(), "53/udp".into(), "8080".into()])
    );
    let v = vars(&[("PORTS", "1 2/udp")]);
    assert_eq!(
        expanded("EXPOSE 80 $PORTS", &v),
        Kind::Expose(vec!["80".into(), "1".into(), "2/udp".into()])
    );
    assert_eq!(
        one("VOLUME /a /b"),
        Kind::Volume(vec!["/a".into(), "/b".into()])
    );
    assert_eq!(one("VOLUME [\"/a b\"]"), Kind::Volume(vec!["/a b".into()]));
    assert_eq!(
        expanded("VOLUME [\"$D\"]", &vars(&[("D", "/d")])),
        Kind::Volume(vec!["/d".into()])
    );
    assert!(perr("FROM scratch\nVOLUME [\" \"]\n").contains("can not be an empty string"));
    assert!(perr("FROM scratch\nEXPOSE\n").contains("EXPOSE requires at least one argument"));
}

#[test]
fn healthcheck_none_and_cmd() {
    assert_eq!(
        one("HEALTHCHECK NONE"),
        Kind::Healthcheck(Healthcheck::default())
    );
    let Kind::Healthcheck(h) =
        one("HEALTHCHECK --interval=1m30s --timeout=3s --start-period=0.5s --start-interval=100ms --retries=3 cmd curl -f http://localhost/")
    else {
        panic!()
    };
    assert_eq!(
        h.command,
        Some(Command::Shell("curl -f http://localhost/".into()))
    );
    assert_eq!(h.interval, Some(Duration::from_secs(90)));
    assert_eq!(h.timeout, Some(Duration::from_secs(3)));
    assert_eq!(h.start_period, Some(Duration::from_millis(500)));
    assert_eq!(h.start_interval, Some(Duration::from_millis(100)));
    assert_eq!(h.retries, Some(3));
    let Kind::Healthcheck(h) = one("HEALTHCHECK --interval=0 CMD [\"/check\", \"-q\"]") else {
        panic!()
    };
    assert_eq!(
        (h.command, h.interval),
        (
            Some(Command::Exec(vec!["/check".into(), "-q".into()])),
            None
        )
    );
    for (text, msg) in [
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        (
            "HEALTHCHECK --retries=1 NONE",
            "HEALTHCHECK NONE takes no arguments",
        ),
        ("HEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
        (
            "HEALTHCHECK TEST x",
            "Unknown type \"TEST\" in HEALTHCHECK (try CMD)",
        ),
        (
            "HEALTHCHECK --retries=0 CMD x",
            "--retries must be at least 1 (not 0)",
        ),
        ("HEALTHCHECK --interval=10 CMD x", "invalid duration \"10\""),
        (
            "HEALTHCHECK --interval=1ns CMD x",
            "cannot be less than 1ms",
        ),
        ("HEALTHCHECK --timeout=-1s CMD x", "cannot be less than 1ms"),
    ] {
        let e = perr(&format!("FROM scratch\n{text}\n"));
        assert!(e.contains(msg), "{text}: {e}");
    }
}

#[test]
fn shell_requires_json() {
    assert_eq!(
        one("SHELL [\"/bin/bash\", \"-eo\", \"pipefail\", \"-c\"]"),
        Kind::Shell(vec![
            "/bin/bash".into(),
            "-eo".into(),
            "pipefail".into(),
            "-c".into()
        ])
    );
    assert!(perr("FROM scratch\nSHELL /bin/bash -c\n")
        .contains("SHELL requires the arguments to be in JSON form"));
    assert!(perr("FROM scratch\nSHELL []\n").contains("SHELL requires at least one argument"));
}

#[test]
fn onbuild_triggers_are_checked_and_kept_verbatim() {
    assert_eq!(
        one("ONBUILD COPY --chown=$U . /app"),
        Kind::Onbuild("COPY --chown=$U . /app".into())
    );
    assert_eq!(
        expanded("ONBUILD RUN echo $X", &vars(&[("X", "x")])),
        Kind::Onbuild("RUN echo $X".into())
    );
    assert!(perr("FROM scratch\nONBUILD ONBUILD RUN x\n")
        .contains("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"));
    assert!(perr("FROM scratch\nONBUILD from alpine\n")
        .contains("FROM isn't allowed as an ONBUILD trigger"));
    assert!(perr("FROM scratch\nONBUILD MAINTAINER me\n")
        .contains("MAINTAINER isn't allowed as an ONBUILD trigger"));
    assert!(perr("FROM scratch\nONBUILD RUNN x\n").contains("unknown instruction: RUNN"));
    assert!(perr("FROM scratch\nONBUILD RUN --bad x\n").contains("unknown flag: --bad"));
    assert!(perr("FROM scratch\nONBUILD\n").contains("ONBUILD requires at least one argument"));
}

#[test]
fn onbuild_heredocs_survive_a_reparse() {
    let Kind::Onbuild(trigger) = one("ONBUILD RUN <<EOF\necho hi\nEOF") else {
        panic!()
    };
    assert_eq!(trigger, "RUN <<EOF\necho hi\nEOF");
    let r = run_of(&trigger);
    assert_eq!(r.command, Command::Shell("echo hi\n".into()));
}

#[test]
fn maintainer_warns_and_other_single_argument_instructions() {
    let d = p("FROM scratch\nMAINTAINER Jane <j@example.com>\nUSER app:app\nSTOPSIGNAL SIGTERM\nWORKDIR /srv/my app\n");
    let k: Vec<_> = d.stages[0]
        .instructions
        .iter()
        .map(|i| i.kind.clone())
        .collect();
    assert_eq!(k[0], Kind::Maintainer("Jane <j@example.com>".into()));
    assert_eq!(k[1], Kind::User("app:app".into()));
    assert_eq!(k[2], Kind::Stopsignal("SIGTERM".into()));
    assert_eq!(k[3], Kind::Workdir("/srv/my app".into()));
    assert!(d.warnings[0].starts_with("Dockerfile:2: MAINTAINER is deprecated"));
    assert!(perr("FROM scratch\nWORKDIR\n").contains("WORKDIR requires exactly one argument"));
    let v = vars(&[("U", "1000"), ("S", "KILL")]);
    assert_eq!(
        expanded("USER ${U}:${G:-0}", &v),
        Kind::User("1000:0".into())
    );
    assert_eq!(
        expanded("STOPSIGNAL SIG$S", &v),
        Kind::Stopsignal("SIGKILL".into())
    );
}

#[test]
fn commands_are_not_expanded() {
    let v = vars(&[("X", "x")]);
    assert_eq!(
        expanded("CMD echo $X", &v),
        Kind::Cmd(Command::Shell("echo $X".into()))
    );
    assert_eq!(
        expanded("ENTRYPOINT [\"$X\"]", &v),
        Kind::Entrypoint(Command::Exec(vec!["$X".into()]))
    );
    assert_eq!(
        expanded("SHELL [\"$X\"]", &v),
        Kind::Shell(vec!["$X".into()])
    );
    let Kind::Healthcheck(h) = expanded("HEALTHCHECK CMD $X", &v) else {
        panic!()
    };
    assert_eq!(h.command, Some(Command::Shell("$X".into())));
}

#[test]
fn copy_expansion_covers_paths_and_flags() {
    let v = vars(&[
        ("APP", "/srv/app"),
        ("U", "app"),
        ("STAGE", "build"),
        ("M", "0755"),
        ("F", "a b"),
    ]);
    let Kind::Copy(c) = expanded(
        "COPY --from=$STAGE --chown=$U:$U --chmod=$M --exclude=$U/*.tmp \"$F\" src/$U ${APP}/",
        &v,
    ) else {
        panic!()
    };
    assert_eq!(c.from.as_deref(), Some("build"));
    assert_eq!(c.chown.as_deref(), Some("app:app"));
    assert_eq!(c.chmod.as_deref(), Some("0755"));
    assert_eq!(c.exclude, ["app/*.tmp"]);
    assert_eq!(c.sources, ["a b", "src/app"]);
    assert_eq!(c.dest, "/srv/app/");
    let Kind::Add(c) = expanded("ADD --checksum=$U http://x/$U.tgz /", &v) else {
        panic!()
    };
    assert_eq!(
        (c.checksum.as_deref(), c.sources[0].as_str()),
        (Some("app"), "http://x/app.tgz")
    );
}

#[test]
fn expansion_errors_name_the_line() {
    let d = p("FROM scratch\n\nWORKDIR ${DIR:?set DIR}\n");
    let e = d.stages[0].instructions[0]
        .expand(&Vars::new(), '\\')
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("Dockerfile:3: failed to expand \"${DIR:?set DIR}\": DIR: set DIR"),
        "{e}"
    );
    let d = p("FROM ${BAD\n");
    assert!(d.stages[0]
        .from
        .expand(&Vars::new(), '\\')
        .unwrap_err()
        .to_string()
        .starts_with("Dockerfile:1: "));
}

#[test]
fn unknown_instructions_and_instructions_before_from() {
    assert_eq!(
        perr("FROM scratch\nRUNN echo\n"),
        "Dockerfile:2: unknown instruction: RUNN"
    );
    assert_eq!(perr("# c\nRUN echo\nFROM scratch\n"), "Dockerfile:2: RUN before the first FROM: only ARG may come before FROM, which starts a stage");
}

#[test]
fn empty_dockerfiles_and_missing_from() {
    for text in [
        "",
        "\n\n",
        "# syntax=docker/dockerfile:1\n# only a comment\n",
    ] {
        assert!(
            perr(text).starts_with("Dockerfile: no instructions"),
            "{text:?}"
        );
    }
    assert_eq!(
        perr("ARG A=1\n"),
        "Dockerfile: no FROM instruction: add FROM <image> (or FROM scratch) to start a stage"
    );
}

#[test]
fn stages_collect_their_instructions_with_lines_and_text() {
    let d = p("ARG V=1\nFROM alpine AS a\nRUN one \\\n  two\nFROM a\nCOPY --from=a /x /y\n");
    assert_eq!(d.stages.len(), 2);
    let a = &d.stages[0].instructions;
    assert_eq!(
        (a.len(), a[0].line, a[0].text.as_str()),
        (1, 3, "RUN one   two")
    );
    let b = &d.stages[1];
    assert_eq!((b.from.image.as_str(), b.from.line), ("a", 5));
    assert_eq!(
        (b.instructions[0].line, b.instructions[0].text.as_str()),
        (6, "COPY --from=a /x /y")
    );
}

#[test]
fn large_inputs_parse_in_linear_time() {
    let start = std::time::Instant::now();
    let mut text = String::from("FROM scratch\n");
    for i in 0..50_000 {
        text.push_str(&format!(
            "ENV K{i}=\"v {i}\"\nRUN echo {i} \\\n  # comment\n  && true\n"
        ));
    }
    text.push_str("RUN x");
    for _ in 0..100_000 {
        text.push_str(" \\\n y");
    }
    text.push_str("\nRUN <<EOF\n");
    text.push_str(&"line\n".repeat(100_000));
    text.push_str("EOF\n");
    text.push_str(&"ONBUILD ".repeat(10_000));
    text.push_str("RUN x\n");
    assert!(parse(&text)
        .unwrap_err()
        .to_string()
        .contains("Chaining ONBUILD"));
    let cut = text.rfind("ONBUILD ONBUILD").unwrap_or(text.len());
    let d = p(&text[..cut.min(text.find("ONBUILD").unwrap_or(cut))]);
    assert_eq!(d.stages[0].instructions.len(), 100_002);
    let nested = format!(
        "FROM scratch\nWORKDIR {}x{}\n",
        "${A:-".repeat(5_000),
        "}".repeat(5_000)
    );
    let d = p(&nested);
    assert!(d.stages[0].instructions[0]
        .expand(&Vars::new(), '\\')
        .is_err());
    let deep_json = format!(
        "FROM scratch\nCMD {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(matches!(
        one(&deep_json[13..]),
        Kind::Cmd(Command::Shell(_))
    ));
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

const BUILDAH_CHECKED: &str = r#"# escape=\
FROM scratch
ARG V=1.2
ENV A="x y" B=a\ b D='$A' G=${A:+set}
ENV C hello "world" $A
# comment
LABEL "k 1"="v $A" \
# dropped
      k2=two
EXPOSE 80/tcp 53/udp
WORKDIR /srv/$V
USER ${U:-1000}:0
STOPSIGNAL SIG${S:-TERM}
"#;

/// `buildah bud` (1.28) made this config from BUILDAH_CHECKED: Env A=x y, B=a b, D=$A,
/// G= (an ENV line sees the variables as they were before it), C=hello world x y; Labels
/// "k 1"="v x y", k2=two; ExposedPorts 80/tcp, 53/udp; WorkingDir /srv/1.2; User 1000:0;
/// StopSignal SIGTERM.
#[test]
fn agrees_with_buildah_on_a_metadata_only_dockerfile() {
    let d = p(BUILDAH_CHECKED);
    let mut v = Vars::new();
    let mut seen = Vec::new();
    for i in &d.stages[0].instructions {
        let k = i.expand(&v, d.directives.escape).unwrap();
        match &k {
            Kind::Arg(a) => a
                .iter()
                .for_each(|a| v.set(&a.name, a.default.clone().unwrap_or_default())),
            Kind::Env(e) => e.iter().for_each(|(k, val)| v.set(k, val)),
            _ => {}
        }
        seen.push(k);
    }
    let env: Vec<(&str, &str)> = v.iter().collect();
    assert_eq!(
        env,
        [
            ("V", "1.2"),
            ("A", "x y"),
            ("B", "a b"),
            ("D", "$A"),
            ("G", ""),
            ("C", "hello world x y")
        ]
    );
    assert_eq!(
        seen[3],
        Kind::Label(vec![
            ("k 1".into(), "v x y".into()),
            ("k2".into(), "two".into())
        ])
    );
    assert_eq!(
        seen[4],
        Kind::Expose(vec!["80/tcp".into(), "53/udp".into()])
    );
    assert_eq!(seen[5], Kind::Workdir("/srv/1.2".into()));
    assert_eq!(seen[6], Kind::User("1000:0".into()));
    assert_eq!(seen[7], Kind::Stopsignal("SIGTERM".into()));
}

/// Found by the `dockerfile` fuzz target: each `ENV A=$A$A$A$A` quadrupled A, so a
/// Dockerfile of a few hundred bytes made the executor allocate gigabytes. One word now
/// expands to at most MAX_EXPANDED bytes.
#[test]
fn a_word_that_expands_past_the_limit_is_an_error_not_an_allocation() {
    let mut text = String::from("FROM a\nENV A=xxxxxxxx\n");
    for _ in 0..12 {
        text.push_str("ENV A=$A$A$A$A\n");
    }
    let file = p(&text);
    let mut v = Vars::new();
    let mut error = None;
    for instruction in &file.stages[0].instructions {
        match instruction.expand(&v, '\\') {
            Ok(Kind::Env(pairs)) => pairs.into_iter().for_each(|(k, x)| v.set(k, x)),
            Ok(_) => {}
            Err(e) => {
                error = Some((instruction.line, e.to_string()));
                break;
            }
        }
    }
    let (line, message) = error.expect("an error, not a 134 MB variable");
    assert_eq!(line, 11, "{message}");
    assert!(
        message.contains("expands to more than 1048576 bytes"),
        "{message}"
    );
    assert!(v.get("A").unwrap().len() <= MAX_EXPANDED);
    // Quoted, and through a default, the same.
    let big = vars(&[("B", &"b".repeat(MAX_EXPANDED / 2 + 1))]);
    for word in ["\"$B$B\"", "${X:-$B$B}", "$B$B"] {
        let e = expand_word(word, &big, '\\').unwrap_err().to_string();
        assert!(e.contains("expands to more than"), "{word}: {e}");
    }
    assert_eq!(
        expand_word("$B", &big, '\\').unwrap().len(),
        MAX_EXPANDED / 2 + 1
    );
}
