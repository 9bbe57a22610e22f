//! Any bytes as a Kafka record value: decoding must return an envelope or an error, never panic,
//! and a decoded envelope must re-encode to a value that decodes to the same envelope.
#![no_main]

use dispatch_core::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::decode(data) {
        let again = Envelope::decode(&env.encode()).expect("a decoded envelope re-encodes validly");
        assert_eq!(again, env);
    }
});
