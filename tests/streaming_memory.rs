//! Reading is streaming: a large `{"Records":[...]}` file (and a large JSON-lines file) is
//! decoded holding one record at a time. dhat's heap profiler measures the peak heap while
//! 16 MiB of generated CloudTrail flows through the framer and decoder from a reader that
//! never holds the whole input either. Its own test binary, so no other test's allocations
//! are counted.

use std::io::Read;

use akwatch::provider::Decoder;
use akwatch::source::framing::{FrameOptions, frame_records};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const EVENT: &str = r#"{"eventVersion":"1.09","userIdentity":{"type":"IAMUser","principalId":"AIDAEXAMPLE","arn":"arn:aws:iam::210987654321:user/bulk","accountId":"210987654321","accessKeyId":"AKIATESTBULK00000001","userName":"bulk"},"eventTime":"2025-03-20T00:00:00Z","eventSource":"s3.amazonaws.com","eventName":"GetObject","awsRegion":"us-east-1","sourceIPAddress":"198.51.100.7","userAgent":"aws-cli/2.15.0","requestParameters":{"bucketName":"data","key":"a/b/c.parquet"},"responseElements":null,"requestID":"r","eventID":"e","readOnly":true,"eventType":"AwsApiCall","recipientAccountId":"210987654321"}"#;

/// Produces `prefix`, then `EVENT` `count` times separated by `sep`, then `suffix`, on demand.
struct Generated {
    parts: Vec<&'static [u8]>,
    part: usize,
    offset: usize,
    remaining_events: usize,
    sep: &'static [u8],
    suffix: &'static [u8],
    state: u8,
}

impl Generated {
    fn new(prefix: &'static [u8], sep: &'static [u8], suffix: &'static [u8], count: usize) -> Self {
        Generated {
            parts: vec![prefix],
            part: 0,
            offset: 0,
            remaining_events: count,
            sep,
            suffix,
            state: 0,
        }
    }
    fn current(&mut self) -> Option<&'static [u8]> {
        loop {
            if self.part < self.parts.len() {
                return Some(self.parts[self.part]);
            }
            self.parts.clear();
            self.part = 0;
            self.offset = 0;
            match self.state {
                0 if self.remaining_events > 0 => {
                    self.remaining_events -= 1;
                    self.parts.push(EVENT.as_bytes());
                    if self.remaining_events > 0 {
                        self.parts.push(self.sep);
                    }
                }
                0 => {
                    self.state = 1;
                    self.parts.push(self.suffix);
                }
                _ => return None,
            }
        }
    }
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(part) = self.current() else {
            return Ok(0);
        };
        let n = (part.len() - self.offset).min(buf.len());
        buf[..n].copy_from_slice(&part[self.offset..self.offset + n]);
        self.offset += n;
        if self.offset == part.len() {
            self.part += 1;
            self.offset = 0;
        }
        Ok(n)
    }
}

fn run(reader: Generated, expected: usize) {
    let decoder = Decoder::auto();
    let mut events = 0usize;
    let mut out = Vec::new();
    frame_records(
        std::io::BufReader::with_capacity(256 * 1024, reader),
        FrameOptions::default(),
        |f| {
            assert!(f.broken.is_none(), "{:?} at line {}", f.broken, f.line);
            decoder.decode(f.bytes, &akwatch::event::Origin::default(), &mut out);
            events += out.drain(..).filter(Result::is_ok).count();
        },
    )
    .unwrap();
    assert_eq!(events, expected);
}

#[test]
fn sixteen_mib_of_records_need_well_under_a_mebibyte_of_heap() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let count = 16 * 1024 * 1024 / EVENT.len();
    run(
        Generated::new(b"{\"Records\":[", b",\n", b"]}\n", count),
        count,
    );
    run(Generated::new(b"", b"\n", b"\n", count), count);
    let stats = dhat::HeapStats::get();
    eprintln!(
        "2 x {count} records ({} MiB each) decoded; peak heap {} KiB",
        (count * EVENT.len()) >> 20,
        stats.max_bytes >> 10
    );
    assert!(
        stats.max_bytes < 1024 * 1024,
        "peak heap {} bytes",
        stats.max_bytes
    );
}
