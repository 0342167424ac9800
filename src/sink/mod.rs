//! Outputs: JSON lines of events and the dead-letter file for rejected records.

use std::io::{self, Write};

use base64::Engine;
use serde::Serialize;

use crate::event::Origin;
use crate::provider::Reject;

/// One line of the dead-letter output: why, where from, and the record unchanged.
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    pub kind: &'static str,
    pub reason: &'a str,
    pub origin: &'a Origin,
    /// The record as it was read, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<&'a str>,
    /// The record as it was read, base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
}

impl<'a> DeadLetter<'a> {
    pub fn new(reject: &'a Reject, raw: &'a [u8]) -> Self {
        let (raw, raw_base64) = match std::str::from_utf8(raw) {
            Ok(s) => (Some(s), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(raw)),
            ),
        };
        DeadLetter {
            kind: reject.kind.as_str(),
            reason: &reject.reason,
            origin: &reject.origin,
            raw,
            raw_base64,
        }
    }
}

/// Writes `value` as one JSON line.
pub fn write_json_line<W: Write, T: Serialize>(out: &mut W, value: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(io::Error::from)?;
    out.write_all(b"\n")
}
