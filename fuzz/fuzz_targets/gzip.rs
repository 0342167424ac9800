//! Gzip input through `source::read_input` (detected by its magic bytes, then framed and
//! decoded). An input that already starts with the gzip magic is used as it is (corrupt,
//! truncated and multi-member streams); any other input is compressed here, in two members
//! split where its first byte says, so the framer behind the decompressor is fuzzed too.
use std::io::Write;

use akwatch::Decoder;
use akwatch::source::framing::FrameOptions;
use akwatch::source::{Input, read_input};
use flate2::Compression;
use flate2::write::GzEncoder;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut member = |part: &[u8]| {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(part).expect("gzip into memory");
        out.extend(enc.finish().expect("gzip into memory"));
    };
    match data.split_first() {
        Some((&split, rest)) if !rest.is_empty() => {
            let at = usize::from(split) * rest.len() / 256;
            let (a, b) = rest.split_at(at);
            member(a);
            member(b);
        }
        _ => member(data),
    }
    out
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let bytes = if data.starts_with(&[0x1f, 0x8b]) {
            data.to_vec()
        } else {
            gzip(data)
        };
        let path = akwatch_fuzz::scratch_file("gzip", &bytes);
        read_input(
            &Input::File(path),
            &Decoder::auto(),
            FrameOptions {
                max_record_bytes: 64 * 1024,
            },
            &mut |event| {
                let _ = serde_json::to_vec(&event);
                Ok(())
            },
            &mut |rejected| {
                let _ = rejected.reject.to_string();
            },
        );
    });
}
