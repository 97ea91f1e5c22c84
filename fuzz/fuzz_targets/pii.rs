//! The PII detectors on any text: masking never panics, and masked text
//! holds no e-mail address the scanner still finds.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use switchyard_pii::{CustomPattern, Kind, Scanner};

static SCANNER: LazyLock<Scanner> = LazyLock::new(|| {
    Scanner::new(&[CustomPattern {
        name: "employee_id".into(),
        pattern: r"EMP-\d{6}".into(),
    }])
    .expect("the pattern compiles")
});

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let (masked, _) = SCANNER.mask(text);
    let (_, again) = SCANNER.mask(&masked);
    assert!(
        !again.contains_key(&Kind::Email),
        "an e-mail address survived masking: {text:?} → {masked:?}"
    );
});
