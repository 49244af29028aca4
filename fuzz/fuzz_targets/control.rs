//! Fuzz target `control`: one control-socket request line, parsed by
//! `Request::parse`, the function the server runs on what it read. Any
//! bytes are a request or an error, never a panic; a parsed request
//! survives a round trip through its own wire form (what `enforcer` the
//! client sends is what the agent reads).
#![no_main]

use enforcer::control::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = Request::parse(data) else {
        return;
    };
    let _ = request.verb();
    let line = serde_json::to_string(&request).expect("a parsed request serialises");
    let again = Request::parse(line.as_bytes()).expect("its wire form parses");
    assert_eq!(again, request);
});
