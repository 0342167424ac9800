//! One record, provider detected per event (`normalize` without `--provider`).
use akwatch::Decoder;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        akwatch_fuzz::decode_record(&Decoder::auto(), data);
    });
}
