//! A whole input file through `source::read_input` (open, framing, decoding), as `normalize`
//! and `replay` read a file; a small record limit so the too-large path is reached too.
use akwatch::Decoder;
use akwatch::source::framing::FrameOptions;
use akwatch::source::{Input, read_input};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let path = akwatch_fuzz::scratch_file("framer", data);
        let options = FrameOptions {
            max_record_bytes: 4096,
        };
        read_input(
            &Input::File(path),
            &Decoder::auto(),
            options,
            &mut |event| {
                let _ = serde_json::to_vec(&event);
                Ok(())
            },
            &mut |rejected| {
                let _ = (rejected.reject.to_string(), rejected.raw.len());
            },
        );
    });
}
