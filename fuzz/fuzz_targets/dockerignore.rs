//! `.dockerignore`: parsing the patterns, then matching paths against them. Input: the
//! file's text, a NUL, then paths one a line.
#![no_main]

use hk_image::build::Ignore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (patterns, paths) = text.split_once('\0').unwrap_or((text, "a/b/c"));
    let Ok(ignore) = Ignore::parse(patterns) else {
        return;
    };
    for path in paths.lines() {
        let _ = ignore.matches(path);
        let _ = ignore.may_include_under(path);
    }
});
