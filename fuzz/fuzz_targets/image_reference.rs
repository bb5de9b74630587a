//! Image references and platforms as people and registries write them: parsing, every
//! accessor, and the round trip through the canonical spelling (which must parse again to
//! the same reference).
#![no_main]

use hk_image::{ImageRef, Platform};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = s.parse::<Platform>().map(|p| p.to_string());
    let Ok(r) = ImageRef::parse(s) else {
        return;
    };
    let _ = (r.registry(), r.api_registry(), r.tag(), r.digest());
    let _ = (r.name(), r.familiar_name(), r.to_string());
    let canonical = r.canonical();
    let again = ImageRef::parse(&canonical)
        .unwrap_or_else(|e| panic!("{s:?} gives canonical {canonical:?}, which fails: {e}"));
    assert_eq!(
        again.canonical(),
        canonical,
        "canonical spelling of {s:?} is unstable"
    );
});
