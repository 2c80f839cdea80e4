//! What operators type: klink.toml and control-socket lines.
#![no_main]

#[path = "setup.rs"]
mod setup;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = klink::config::Config::parse(std::path::Path::new("klink.toml"), text);
    // A control line against the shared routes: whatever it says, the
    // answer is a reply, never a panic. (Route changes persist to the
    // fuzzer's temporary state directory.)
    let s = &*setup::SETUP;
    let mirrors = klink::mirror::Mirrors::default();
    let _ = klink::control::handle(&s.routes, &mirrors, text);
});
