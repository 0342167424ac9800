//! Splits a byte stream into JSON records without holding more than one record in memory.
//!
//! Accepted layouts, auto-detected per stream:
//! - JSON lines: one value per line (a bad line is one bad record; the next line is fine);
//! - whole-file JSON: one or more (pretty-printed) values, concatenated;
//! - a top-level array `[...]`: each element is a record;
//! - a CloudTrail log file `{"Records":[...]}`: each element of `Records` is a record.
//!
//! The scanner only tracks strings and bracket depth; the records it hands out are parsed
//! (and validated) by the provider decoders. This is why it is hand-written rather than a
//! streaming JSON parser: it must keep going past a malformed record, which a parser does not.

use std::io::{self, Read};

/// Records larger than this are rejected (and not buffered beyond it).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// How much of the stream is looked at to tell JSON lines from whole-file JSON.
const PEEK_BYTES: usize = 256 * 1024;

/// How much is read at a time.
const CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct FrameOptions {
    pub max_record_bytes: usize,
}

impl Default for FrameOptions {
    fn default() -> Self {
        FrameOptions {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

/// Why a frame could not be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// The line or the input ended inside the record.
    Truncated,
    /// The record is larger than `max_record_bytes`; `bytes` holds its beginning.
    TooLarge,
}

/// One record found in the stream.
#[derive(Debug)]
pub struct Frame<'a> {
    pub bytes: &'a [u8],
    /// 1-based line of the record's first byte.
    pub line: u64,
    /// 0-based index of the record in the stream.
    pub index: u64,
    pub broken: Option<(Broken, String)>,
}

/// Reads `reader` to the end, calling `emit` for every record. Only I/O errors are returned;
/// malformed input becomes frames with `broken` set, or records the decoder will reject.
pub fn frame_records<R: Read>(
    mut reader: R,
    options: FrameOptions,
    mut emit: impl FnMut(Frame<'_>),
) -> io::Result<ScanEnd> {
    let peek = peek_first_line(&mut reader)?;
    let lines_mode = detect_lines_mode(&peek);
    let mut reader = io::Cursor::new(peek).chain(reader);
    let mut scanner = Scanner::new(lines_mode, options.max_record_bytes);
    let mut chunk = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{e} (after line {}, record {})",
                        scanner.line, scanner.index
                    ),
                ));
            }
        };
        scanner.feed(&chunk[..n], &mut emit);
    }
    scanner.finish(&mut emit);
    Ok(ScanEnd {
        lines: scanner.line,
        records: scanner.index,
        lines_mode,
    })
}

/// [`frame_records`] over bytes in memory, in the chunks the reader would give: with the fast
/// path, or (`fast: false`) one byte at a time — the reference the benchmark compares it with
/// (`benches/decode.rs`, `framing`). Returns the number of records.
#[doc(hidden)]
pub fn frame_bytes(
    data: &[u8],
    lines_mode: bool,
    options: FrameOptions,
    fast: bool,
    mut emit: impl FnMut(Frame<'_>),
) -> u64 {
    let mut scanner = Scanner::new(lines_mode, options.max_record_bytes);
    for part in data.chunks(CHUNK_BYTES) {
        if fast {
            scanner.feed(part, &mut emit);
        } else {
            for &b in part {
                scanner.step(b, &mut emit);
            }
        }
    }
    scanner.finish(&mut emit);
    scanner.index
}

/// What the scan saw, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanEnd {
    pub lines: u64,
    pub records: u64,
    pub lines_mode: bool,
}

/// Reads until the first non-blank line is complete, `PEEK_BYTES` are in, or the input ends.
/// (One `read` is not enough: pipes, stdin and decompressors return short reads.)
fn peek_first_line<R: Read>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut peek = Vec::with_capacity(8 * 1024);
    let mut buf = [0u8; 8 * 1024];
    while peek.len() < PEEK_BYTES {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let searched = peek.len();
        peek.extend_from_slice(&buf[..n]);
        let start = peek.iter().position(|b| !b.is_ascii_whitespace());
        if let Some(start) = start
            && peek[start.max(searched)..].contains(&b'\n')
        {
            break;
        }
    }
    Ok(peek)
}

/// JSON lines when the first non-blank line holds a complete value on its own (or is longer
/// than the peek window: a single-line file). Whole-file JSON otherwise.
fn detect_lines_mode(peek: &[u8]) -> bool {
    let start = match peek.iter().position(|b| !b.is_ascii_whitespace()) {
        Some(s) => s,
        None => return true,
    };
    let rest = &peek[start..];
    let line = match rest.iter().position(|&b| b == b'\n') {
        Some(end) => &rest[..end],
        None => return true,
    };
    let mut depth: i64 = 0;
    let (mut in_str, mut esc, mut closed) = (false, false, false);
    for &b in line {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    closed = true;
                }
            }
            _ => {}
        }
    }
    closed && depth == 0 && !in_str
}

struct Scanner {
    lines_mode: bool,
    max: usize,
    line: u64,
    index: u64,
    buf: Vec<u8>,
    oversize: bool,
    record_line: u64,
    /// Bracket depth, counting the containers being unwrapped.
    depth: u32,
    in_str: bool,
    esc: bool,
    /// Inside a record.
    in_record: bool,
    /// The depth at which the current record started.
    record_base: u32,
    /// The current record is a bare scalar (or garbage): it ends at a separator.
    scalar: bool,
    /// The depth of the array whose elements are being handed out as records.
    unwrap: Option<u32>,
    unwrap_line: u64,
    /// After `{"Records":[...]`: skip the rest of the wrapper object.
    skip_rest: bool,
}

impl Scanner {
    fn new(lines_mode: bool, max: usize) -> Self {
        Scanner {
            lines_mode,
            max,
            line: 1,
            index: 0,
            buf: Vec::with_capacity(4096),
            oversize: false,
            record_line: 1,
            depth: 0,
            in_str: false,
            esc: false,
            in_record: false,
            record_base: 0,
            scalar: false,
            unwrap: None,
            unwrap_line: 1,
            skip_rest: false,
        }
    }

    fn step(&mut self, b: u8, emit: &mut impl FnMut(Frame<'_>)) {
        if self.in_record {
            self.step_in_record(b, emit);
        } else {
            self.step_between(b, emit);
        }
        if b == b'\n' {
            self.line += 1;
        }
    }

    /// Steps through `data`. Runs of bytes that cannot change the scanner's state beyond moving
    /// through strings, escapes, bracket depth and lines are copied whole instead of stepped one
    /// by one: inside a record (not a scalar) they are found 64 bytes at a time by
    /// [`Scanner::block_run`]; a top-level scalar runs to its newline (`memchr`), a string element
    /// of an array to the next `"`, `\\` or newline (`memchr3`). The result is the byte-by-byte
    /// scan's (`tests::fast_path_equals_the_byte_scan`).
    fn feed(&mut self, data: &[u8], emit: &mut impl FnMut(Frame<'_>)) {
        let mut i = 0;
        while i < data.len() {
            if self.in_record {
                let rest = &data[i..];
                let run = if !self.scalar {
                    self.block_run(rest)
                } else if self.unwrap.is_none() {
                    memchr::memchr(b'\n', rest).unwrap_or(rest.len())
                } else if self.in_str && !self.esc {
                    memchr::memchr3(b'"', b'\\', b'\n', rest).unwrap_or(rest.len())
                } else {
                    0
                };
                if run > 0 {
                    self.push_run(&rest[..run]);
                    i += run;
                    continue;
                }
            }
            self.step(data[i], emit);
            i += 1;
        }
    }

    /// Inside a record that is not a scalar: the length of the run at the start of `data` in
    /// which the byte-by-byte scan would only push bytes and track strings, escapes, bracket
    /// depth and lines, with the scanner's state moved past it (the caller pushes the bytes).
    /// The run ends before the first byte that does more: a bracket that closes the record, a
    /// newline in JSON-lines mode, a `[` one level down near the start of a top-level record (it
    /// may open `{"Records":[`), or a backslash outside strings (where the escape masks below
    /// stop being right). Each 64-byte block is classified into bit masks at once (simdjson's
    /// first stage): quotes, backslashes, brackets, newlines; escaped bytes from the parity of
    /// backslash runs; the string mask by prefix XOR of the unescaped quotes; then only the
    /// brackets outside strings are walked.
    fn block_run(&mut self, data: &[u8]) -> usize {
        let check_unwrap = self.record_base == 0 && self.unwrap.is_none();
        let mut depth = self.depth;
        // Carried across blocks: in a string, and the next block's first byte escaped.
        let mut in_str = u64::from(self.in_str);
        let mut esc = u64::from(self.esc);
        let mut newlines = 0u64;
        let mut pos = 0;
        let mut pad = [0u8; 64];
        while pos < data.len() {
            let len = (data.len() - pos).min(64);
            let block: &[u8; 64] = match data[pos..].first_chunk::<64>() {
                Some(block) => block,
                None => {
                    // The tail (the last block: the loop ends after it). Zeros are none of the
                    // classified bytes.
                    pad[..len].copy_from_slice(&data[pos..]);
                    &pad
                }
            };
            let c = classify(block);
            let mut next_esc = esc;
            let escaped = escaped(c.backslash, &mut next_esc);
            // Bit i: inside a string after byte i (an opening quote is in, a closing one out).
            let strings = prefix_xor(c.quote & !escaped) ^ in_str.wrapping_neg();
            let mut stops = c.backslash & !strings;
            if self.lines_mode {
                stops |= c.newline;
            }
            let mut end = (stops.trailing_zeros() as usize).min(len);
            let mut brackets = (c.open | c.close) & !strings & below(end);
            while brackets != 0 {
                let j = brackets.trailing_zeros() as usize;
                brackets &= brackets - 1;
                if c.open & (1 << j) != 0 {
                    if check_unwrap
                        && depth == 1
                        && block[j] == b'['
                        && (self.buf.len() + pos + j).min(self.max) <= RECORDS_PREFIX_MAX
                    {
                        end = j;
                        break;
                    }
                    depth += 1;
                } else {
                    if depth <= self.record_base + 1 {
                        end = j;
                        break;
                    }
                    depth -= 1;
                }
            }
            newlines += u64::from((c.newline & below(end)).count_ones());
            if end < 64 {
                if end > 0 {
                    in_str = (strings >> (end - 1)) & 1;
                }
                esc = (escaped >> end) & 1;
                pos += end;
                break;
            }
            in_str = strings >> 63;
            esc = next_esc;
            pos += 64;
        }
        self.depth = depth;
        self.in_str = in_str != 0;
        self.esc = esc != 0;
        self.line += newlines;
        pos
    }

    /// [`Scanner::push`] for a run of bytes.
    fn push_run(&mut self, run: &[u8]) {
        let room = self.max.saturating_sub(self.buf.len());
        if run.len() > room {
            self.oversize = true;
        }
        self.buf.extend_from_slice(&run[..run.len().min(room)]);
    }

    fn push(&mut self, b: u8) {
        if self.buf.len() < self.max {
            self.buf.push(b);
        } else {
            self.oversize = true;
        }
    }

    fn step_in_record(&mut self, b: u8, emit: &mut impl FnMut(Frame<'_>)) {
        if self.scalar && self.unwrap.is_none() {
            // A top-level scalar or garbage runs to the end of its line, quotes and all.
            if b == b'\n' {
                self.complete(emit);
            } else {
                self.push(b);
            }
            return;
        }
        if self.in_str {
            if b == b'\n' && self.lines_mode {
                self.broken_line(emit, "line ends inside a string");
                return;
            }
            self.push(b);
            self.string_byte(b);
            return;
        }
        if self.scalar && (b.is_ascii_whitespace() || matches!(b, b',' | b']' | b'}')) {
            self.complete(emit);
            self.step_between(b, emit);
            return;
        }
        if b == b'\n' && self.lines_mode {
            self.broken_line(emit, "line ends before the JSON value is closed");
            return;
        }
        self.push(b);
        match b {
            b'"' => self.in_str = true,
            b'{' | b'[' => {
                self.depth += 1;
                if b == b'['
                    && self.depth == 2
                    && self.record_base == 0
                    && self.unwrap.is_none()
                    && is_records_prefix(&self.buf)
                {
                    // `{"Records":[` — hand out the elements instead of the whole file.
                    self.buf.clear();
                    self.in_record = false;
                    self.unwrap = Some(2);
                    self.unwrap_line = self.record_line;
                }
            }
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                if self.depth <= self.record_base {
                    self.depth = self.record_base;
                    self.complete(emit);
                }
            }
            _ => {}
        }
    }

    fn step_between(&mut self, b: u8, emit: &mut impl FnMut(Frame<'_>)) {
        if self.skip_rest {
            self.skip_wrapper_rest(b);
            return;
        }
        if b.is_ascii_whitespace() {
            if b == b'\n' && self.lines_mode && self.unwrap.is_some() {
                self.broken_line(emit, "line ends before the array is closed");
            }
            return;
        }
        match self.unwrap {
            Some(level) if self.depth == level => match b {
                b',' => {}
                b']' | b'}' => {
                    self.depth -= 1;
                    self.unwrap = None;
                    self.skip_rest = self.depth > 0;
                }
                _ => self.start(b),
            },
            Some(_) => {
                // Depth and unwrap level disagree only after a broken record; resynchronise.
                self.unwrap = None;
                self.depth = 0;
                self.start(b);
            }
            None => match b {
                b'[' if self.depth == 0 => {
                    self.depth = 1;
                    self.unwrap = Some(1);
                    self.unwrap_line = self.line;
                }
                _ => self.start(b),
            },
        }
    }

    /// Tracks the end of a string: an unescaped `"`.
    fn string_byte(&mut self, b: u8) {
        if self.esc {
            self.esc = false;
        } else if b == b'\\' {
            self.esc = true;
        } else if b == b'"' {
            self.in_str = false;
        }
    }

    fn skip_wrapper_rest(&mut self, b: u8) {
        if self.in_str {
            self.string_byte(b);
            return;
        }
        match b {
            b'"' => self.in_str = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 0 {
                    self.skip_rest = false;
                }
            }
            b'\n' if self.lines_mode => {
                self.skip_rest = false;
                self.depth = 0;
            }
            _ => {}
        }
    }

    fn start(&mut self, b: u8) {
        self.in_record = true;
        self.record_base = self.depth;
        self.record_line = self.line;
        self.buf.clear();
        self.oversize = false;
        self.in_str = false;
        self.esc = false;
        self.buf.push(b);
        match b {
            b'{' | b'[' => {
                self.scalar = false;
                self.depth += 1;
            }
            b'"' => {
                self.scalar = true;
                self.in_str = self.unwrap.is_some();
            }
            _ => self.scalar = true,
        }
    }

    fn complete(&mut self, emit: &mut impl FnMut(Frame<'_>)) {
        let broken = self.oversize.then(|| {
            (
                Broken::TooLarge,
                format!(
                    "record larger than {} bytes (starts at line {})",
                    self.max, self.record_line
                ),
            )
        });
        emit(Frame {
            bytes: &self.buf,
            line: self.record_line,
            index: self.index,
            broken,
        });
        self.index += 1;
        self.in_record = false;
        self.scalar = false;
        self.oversize = false;
    }

    /// JSON-lines mode: the line ended inside a record or an array. The partial record is
    /// handed out as truncated and the scanner starts afresh on the next line.
    fn broken_line(&mut self, emit: &mut impl FnMut(Frame<'_>), what: &str) {
        let line = if self.in_record {
            self.record_line
        } else {
            self.unwrap_line
        };
        if !self.in_record {
            self.buf.clear();
        }
        emit(Frame {
            bytes: &self.buf,
            line,
            index: self.index,
            broken: Some((
                Broken::Truncated,
                format!("truncated JSON at line {}: {what}", self.line),
            )),
        });
        self.index += 1;
        self.reset();
    }

    fn reset(&mut self) {
        self.in_record = false;
        self.scalar = false;
        self.oversize = false;
        self.in_str = false;
        self.esc = false;
        self.depth = 0;
        self.unwrap = None;
        self.skip_rest = false;
        self.buf.clear();
    }

    fn finish(&mut self, emit: &mut impl FnMut(Frame<'_>)) {
        if self.in_record {
            if self.scalar && !self.in_str {
                self.complete(emit);
            } else {
                let line = self.record_line;
                emit(Frame {
                    bytes: &self.buf,
                    line,
                    index: self.index,
                    broken: Some((
                        Broken::Truncated,
                        format!(
                            "truncated JSON: input ends inside the record that starts at line {line}"
                        ),
                    )),
                });
                self.index += 1;
            }
        } else if self.unwrap.is_some() {
            emit(Frame {
                bytes: &[],
                line: self.unwrap_line,
                index: self.index,
                broken: Some((
                    Broken::Truncated,
                    format!(
                        "truncated JSON: input ends before the array opened at line {} is closed",
                        self.unwrap_line
                    ),
                )),
            });
            self.index += 1;
        }
        self.reset();
    }
}

/// One bit per byte of a 64-byte block (bit `i` for byte `i`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Classes {
    quote: u64,
    backslash: u64,
    /// `{` or `[`.
    open: u64,
    /// `}` or `]`.
    close: u64,
    newline: u64,
}

/// [`Classes`] with SSE2 (always there on x86_64), four 16-byte lanes; `safe_arch` keeps the
/// intrinsics out of this crate's code, which has no `unsafe`.
#[cfg(target_arch = "x86_64")]
fn classify(block: &[u8; 64]) -> Classes {
    use safe_arch::{
        bitor_m128i, cmp_eq_mask_i8_m128i, load_unaligned_m128i, move_mask_i8_m128i,
        set_splat_i8_m128i,
    };
    let splat = |b: u8| set_splat_i8_m128i(b as i8);
    let (quote, backslash, newline) = (splat(b'"'), splat(b'\\'), splat(b'\n'));
    // `[` and `{` differ only in 0x20, as do `]` and `}`; no other byte ORs to 0x7b or 0x7d.
    let (case, open, close) = (splat(0x20), splat(b'{'), splat(b'}'));
    let mut c = Classes::default();
    for (k, lane) in block.as_chunks::<16>().0.iter().enumerate() {
        let v = load_unaligned_m128i(lane);
        let folded = bitor_m128i(v, case);
        let bits =
            |a, b| u64::from(move_mask_i8_m128i(cmp_eq_mask_i8_m128i(a, b)) as u16) << (16 * k);
        c.quote |= bits(v, quote);
        c.backslash |= bits(v, backslash);
        c.newline |= bits(v, newline);
        c.open |= bits(folded, open);
        c.close |= bits(folded, close);
    }
    c
}

#[cfg(not(target_arch = "x86_64"))]
fn classify(block: &[u8; 64]) -> Classes {
    classify_swar(block)
}

/// [`Classes`] eight bytes at a time in `u64` words (the portable path).
#[cfg(any(test, not(target_arch = "x86_64")))]
fn classify_swar(block: &[u8; 64]) -> Classes {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    /// One bit per byte of `w` equal to `b` (exact: no carries between bytes).
    fn eq(w: u64, b: u8) -> u64 {
        let t = w ^ (ONES * u64::from(b));
        let zero = !(((t & LOW7) + LOW7) | t | LOW7);
        // Gathers the 0x80 bits of the eight bytes into the top byte, then down.
        ((zero >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
    }
    let mut c = Classes::default();
    for (k, word) in block.as_chunks::<8>().0.iter().enumerate() {
        let w = u64::from_le_bytes(*word);
        let folded = w | (ONES * 0x20);
        c.quote |= eq(w, b'"') << (8 * k);
        c.backslash |= eq(w, b'\\') << (8 * k);
        c.newline |= eq(w, b'\n') << (8 * k);
        c.open |= eq(folded, b'{') << (8 * k);
        c.close |= eq(folded, b'}') << (8 * k);
    }
    c
}

/// The bytes escaped by a backslash, taking every backslash to be inside a string (a run of
/// backslashes escapes the byte after it when its length is odd; simdjson's carry trick).
/// `carry` says whether the block's first byte is escaped, and is set for the next block.
fn escaped(backslash: u64, carry: &mut u64) -> u64 {
    const EVEN: u64 = 0x5555_5555_5555_5555;
    let backslash = backslash & !*carry;
    let follows = (backslash << 1) | *carry;
    let odd_starts = backslash & !EVEN & !follows;
    let (even_runs, overflow) = odd_starts.overflowing_add(backslash);
    *carry = u64::from(overflow);
    (EVEN ^ (even_runs << 1)) & follows
}

/// Bit `i` is the XOR of bits `0..=i` (a carry-less multiply by all ones, done with shifts).
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// The bits below bit `n`.
fn below(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// [`is_records_prefix`] is false for a buffer longer than this.
const RECORDS_PREFIX_MAX: usize = 256;

/// `{"Records":` with any whitespace, followed (in the caller) by `[`.
fn is_records_prefix(buf: &[u8]) -> bool {
    const WANT: &[u8] = b"{\"Records\":[";
    if buf.len() > RECORDS_PREFIX_MAX {
        return false;
    }
    let mut it = buf.iter().copied().filter(|b| !b.is_ascii_whitespace());
    WANT.iter().all(|&w| it.next() == Some(w)) && it.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames `input` and returns each record as (text, line, broken kind).
    fn frames(input: &str) -> Vec<(String, u64, Option<Broken>)> {
        frames_with(input, FrameOptions::default())
    }

    fn frames_with(input: &str, options: FrameOptions) -> Vec<(String, u64, Option<Broken>)> {
        let mut out = Vec::new();
        frame_records(
            io::BufReader::with_capacity(7, input.as_bytes()),
            options,
            |f| {
                out.push((
                    String::from_utf8_lossy(f.bytes).into_owned(),
                    f.line,
                    f.broken.map(|b| b.0),
                ));
            },
        )
        .unwrap();
        out
    }

    #[test]
    fn json_lines_with_a_bad_line_keep_their_neighbours() {
        let got = frames("{\"a\":1}\n{\"b\":\"x\n{\"c\":[1,2]}\n\n{\"d\":{}}\n");
        assert_eq!(
            got,
            vec![
                ("{\"a\":1}".into(), 1, None),
                ("{\"b\":\"x".into(), 2, Some(Broken::Truncated)),
                ("{\"c\":[1,2]}".into(), 3, None),
                ("{\"d\":{}}".into(), 5, None),
            ]
        );
    }

    #[test]
    fn records_file_hands_out_its_elements() {
        let got = frames(
            "{\n  \"Records\" : [\n    {\"a\": \"]}\"},\n    {\"b\": [1]}\n  ]\n}\n{\"next\":1}",
        );
        assert_eq!(
            got,
            vec![
                ("{\"a\": \"]}\"}".into(), 3, None),
                ("{\"b\": [1]}".into(), 4, None),
                ("{\"next\":1}".into(), 7, None),
            ]
        );
    }

    #[test]
    fn single_line_records_file_and_top_level_array() {
        let got = frames("{\"Records\":[{\"a\":1},{\"b\":2}]}\n[{\"c\":3}, {\"d\":4}]\n");
        let texts: Vec<_> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(texts, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}", "{\"d\":4}"]);
    }

    #[test]
    fn pretty_printed_document_is_one_record() {
        let got = frames("{\n \"eventName\": \"X\",\n \"x\": {\"y\": \"a\\\"}\"}\n}\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, 1);
        assert!(got[0].2.is_none());
    }

    #[test]
    fn truncated_document_and_unclosed_array_are_reported() {
        let got = frames("[\n {\"a\":1},\n {\"b\":");
        assert_eq!(got[0].0, "{\"a\":1}");
        assert_eq!(got[1].2, Some(Broken::Truncated));
        assert_eq!(got.len(), 2);
        let got = frames("[\n {\"a\":1}\n");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].2, Some(Broken::Truncated));
    }

    #[test]
    fn garbage_and_scalars_become_records_for_the_decoder_to_reject() {
        let got = frames("not json\n{\"a\":1}\n42\n");
        let texts: Vec<_> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(texts, ["not json", "{\"a\":1}", "42"]);
        let got = frames("[1, \"x,]\", {\"a\":1}]");
        let texts: Vec<_> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(texts, ["1", "\"x,]\"", "{\"a\":1}"]);
    }

    #[test]
    fn oversize_record_is_cut_and_flagged() {
        let big = format!("{{\"a\":\"{}\"}}\n{{\"b\":1}}\n", "x".repeat(100));
        let got = frames_with(
            &big,
            FrameOptions {
                max_record_bytes: 32,
            },
        );
        assert_eq!(got[0].2, Some(Broken::TooLarge));
        assert_eq!(got[0].0.len(), 32);
        assert_eq!(got[1], ("{\"b\":1}".into(), 2, None));
    }

    /// A reader that hands out one byte per `read`, as a slow pipe may.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.is_empty()) {
                (Some((b, rest)), false) => {
                    buf[0] = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn short_reads_do_not_change_the_mode() {
        let input = "{\"Records\":[{\"a\":1},\n{\"b\":2}]}\n";
        let mut got = Vec::new();
        let end = frame_records(Trickle(input.as_bytes()), FrameOptions::default(), |f| {
            got.push((
                String::from_utf8_lossy(f.bytes).into_owned(),
                f.broken.is_some(),
            ));
        })
        .unwrap();
        assert!(!end.lines_mode);
        assert_eq!(
            got,
            [
                ("{\"a\":1}".to_owned(), false),
                ("{\"b\":2}".to_owned(), false)
            ]
        );
    }

    #[test]
    fn empty_input_has_no_records() {
        assert!(frames("").is_empty());
        assert!(frames("  \n\n ").is_empty());
        assert!(frames("[]").is_empty());
        assert!(frames("{\"Records\":[]}").is_empty());
    }

    type Out = Vec<(Vec<u8>, u64, u64, Option<(Broken, String)>)>;

    /// The scan one byte at a time (the reference the fast path must equal), or fed in chunks of
    /// `chunk` bytes through the fast path.
    fn scan(input: &[u8], lines_mode: bool, max: usize, chunk: Option<usize>) -> (Out, u64) {
        let mut out: Out = Vec::new();
        let mut emit = |f: Frame<'_>| out.push((f.bytes.to_vec(), f.line, f.index, f.broken));
        let mut sc = Scanner::new(lines_mode, max);
        match chunk {
            None => {
                for &b in input {
                    sc.step(b, &mut emit);
                }
            }
            Some(n) => {
                for part in input.chunks(n.max(1)) {
                    sc.feed(part, &mut emit);
                }
            }
        }
        sc.finish(&mut emit);
        let lines = sc.line;
        (out, lines)
    }

    /// Pieces for inputs that cross 64-byte blocks with long strings and backslash runs.
    const PIECES: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b"\\",
        b"\\\\\\",
        b"\\\\\\\\\\\\\\\\\\\\\\\\\\",
        b"\n",
        b",",
        b":",
        b" ",
        b"\"k\":\"v\"",
        b"{\"Records\":[",
        b"abcdefghijklmnopqrstuvwxyz0123456789",
        b"\"0123456789012345678901234567890123456789012345678901234567890123456789\"",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        #[test]
        fn fast_path_equals_the_byte_scan(
            input in proptest::collection::vec(proptest::sample::select(b"{}[]\\\\\\\"\",: \n\tab1R".to_vec()), 0..600),
            lines_mode: bool,
            max in proptest::prop_oneof![1usize..40, 200usize..300, proptest::strategy::Just(1usize << 20)],
            chunk in proptest::prop_oneof![1usize..70, proptest::sample::select(vec![63usize, 64, 65, 127, 128, 200, 4096])],
        ) {
            proptest::prop_assert_eq!(scan(&input, lines_mode, max, None), scan(&input, lines_mode, max, Some(chunk)));
        }

        #[test]
        fn fast_path_equals_the_byte_scan_across_blocks(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES.to_vec()), 0..80),
            lines_mode: bool,
            max in proptest::prop_oneof![200usize..300, proptest::strategy::Just(1usize << 20)],
            chunk in proptest::sample::select(vec![1usize, 7, 63, 64, 65, 200, 4096]),
        ) {
            let input = pieces.concat();
            proptest::prop_assert_eq!(scan(&input, lines_mode, max, None), scan(&input, lines_mode, max, Some(chunk)));
        }

        #[test]
        fn block_classes_match_the_portable_ones(block in proptest::collection::vec(proptest::sample::select(b"{}[]\\\"\n{[]}\x7b\x5b\x7d\x5d\x3b\x3d\x22\x00\xff\x80\xdbab".to_vec()), 64)) {
            let block: [u8; 64] = block.try_into().unwrap();
            let mut want = Classes::default();
            for (i, &b) in block.iter().enumerate() {
                let bit = 1u64 << i;
                match b {
                    b'"' => want.quote |= bit,
                    b'\\' => want.backslash |= bit,
                    b'\n' => want.newline |= bit,
                    b'{' | b'[' => want.open |= bit,
                    b'}' | b']' => want.close |= bit,
                    _ => {}
                }
            }
            proptest::prop_assert_eq!(classify(&block), want);
            proptest::prop_assert_eq!(classify_swar(&block), want);
        }

        #[test]
        fn escapes_match_the_sequential_rule(words in proptest::collection::vec(proptest::prop_oneof![proptest::num::u64::ANY, proptest::strategy::Just(u64::MAX), proptest::strategy::Strategy::prop_map(proptest::num::u64::ANY, |w| w | 0xffff_0000_0000_ffff)], 1..5), start: bool) {
            let (mut carry, mut esc) = (u64::from(start), start);
            for w in words {
                let mut want = 0u64;
                for i in 0..64 {
                    if esc {
                        want |= 1 << i;
                        esc = false;
                    } else if w >> i & 1 == 1 {
                        esc = true;
                    }
                }
                proptest::prop_assert_eq!(escaped(w, &mut carry), want);
                proptest::prop_assert_eq!(carry == 1, esc);
            }
        }
    }

    #[test]
    fn prefix_xor_is_the_running_parity() {
        for x in [
            0u64,
            1,
            0b1001,
            u64::MAX,
            0x8000_0000_0000_0001,
            0x0123_4567_89ab_cdef,
        ] {
            let mut want = 0u64;
            let mut parity = 0u64;
            for i in 0..64 {
                parity ^= x >> i & 1;
                want |= parity << i;
            }
            assert_eq!(prefix_xor(x), want, "{x:#x}");
        }
    }

    #[test]
    fn fast_path_equals_the_byte_scan_on_the_bundled_logs() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/logs");
        let mut seen = 0;
        for entry in walkdir::WalkDir::new(dir)
            .into_iter()
            .filter_map(Result::ok)
        {
            if !entry.file_type().is_file() {
                continue;
            }
            let mut bytes = Vec::new();
            let mut reader =
                crate::source::open(&crate::source::Input::File(entry.path().to_path_buf()))
                    .unwrap();
            std::io::Read::read_to_end(&mut reader, &mut bytes).unwrap();
            let lines_mode = detect_lines_mode(&bytes[..bytes.len().min(PEEK_BYTES)]);
            for max in [DEFAULT_MAX_RECORD_BYTES, 700] {
                let want = scan(&bytes, lines_mode, max, None);
                for chunk in [1, 13, 4096, CHUNK_BYTES] {
                    assert_eq!(
                        want,
                        scan(&bytes, lines_mode, max, Some(chunk)),
                        "{} chunk {chunk}",
                        entry.path().display()
                    );
                }
            }
            seen += 1;
        }
        assert!(seen > 0);
    }
}
