//! One record with the provider pinned to Alibaba (`--provider alibaba`, a pinned Kafka input).
use akwatch::{Cloud, Decoder};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        akwatch_fuzz::decode_record(&Decoder::pinned(Some(Cloud::Alibaba)), data);
    });
}
