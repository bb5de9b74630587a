//! The Dockerfile parser and word expander: parse, then expand every instruction in order
//! with the ARG and ENV state an executor would carry (so expansions feed later ones), the
//! FROM lines with the global ARGs, RUN's --mount values and ONBUILD triggers.
#![no_main]

use hk_image::dockerfile::{parse, parse_mount, Kind, Vars};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = parse(text) else {
        return;
    };
    let escape = file.directives.escape;
    let mut global = Vars::new();
    for arg in &file.global_args {
        global.set(arg.name.clone(), arg.default.clone().unwrap_or_default());
    }
    for stage in &file.stages {
        let _ = stage.from.expand(&global, escape);
        let mut vars = Vars::new();
        for instruction in &stage.instructions {
            let Ok(kind) = instruction.expand(&vars, escape) else {
                continue;
            };
            match kind {
                Kind::Arg(args) => {
                    for arg in args {
                        let value = arg
                            .default
                            .or_else(|| global.get(&arg.name).map(Into::into));
                        vars.set(arg.name, value.unwrap_or_default());
                    }
                }
                Kind::Env(pairs) => {
                    for (k, v) in pairs {
                        vars.set(k, v);
                    }
                }
                Kind::Run(run) => {
                    for mount in &run.mounts {
                        let _ = parse_mount(mount);
                    }
                }
                Kind::Onbuild(trigger) => {
                    let _ = parse(&trigger);
                }
                _ => {}
            }
        }
    }
});
