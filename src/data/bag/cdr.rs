//! OMG CDR (XCDR1, "plain CDR") as ROS 2 serializes messages: a 4-byte encapsulation header
//! (`00 01 00 00` for little-endian, `00 00 00 00` for big-endian) followed by the fields in declaration
//! order, each primitive aligned to its own size (at most 8) relative to the first byte after the header.
//!
//! Strings are a `u32` length that counts a terminating NUL, the bytes, then the NUL; sequences are a `u32`
//! element count then the elements; fixed-size arrays are the elements alone. The writer always produces
//! little-endian data; the reader accepts both byte orders.
use std::fmt;

/// The encapsulation header of little-endian plain CDR (`CDR_LE`).
pub const CDR_LE_HEADER: [u8; 4] = [0x00, 0x01, 0x00, 0x00];
/// The encapsulation header of big-endian plain CDR (`CDR_BE`).
pub const CDR_BE_HEADER: [u8; 4] = [0x00, 0x00, 0x00, 0x00];

/// A CDR decoding failure: what went wrong and at which byte offset of the message (header included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdrError {
    /// Byte offset in the serialized message, counting the 4-byte encapsulation header.
    pub offset: usize,
    /// What was wrong.
    pub why: String,
}

impl fmt::Display for CdrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CDR at byte {}: {}", self.offset, self.why)
    }
}

impl std::error::Error for CdrError {}

/// Result of CDR decoding.
pub type CdrResult<T> = std::result::Result<T, CdrError>;

/// Serializes values as little-endian plain CDR into a growing buffer that starts with the header.
#[derive(Debug, Clone)]
pub struct CdrWriter {
    buf: Vec<u8>,
}

impl Default for CdrWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl CdrWriter {
    /// An empty message (just the `CDR_LE` header).
    pub fn new() -> Self {
        Self::with_capacity(64)
    }

    /// An empty message with room for `capacity` bytes of payload.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + 4);
        buf.extend_from_slice(&CDR_LE_HEADER);
        Self { buf }
    }

    /// Reuses `buf` (cleared) as the output buffer, to avoid an allocation per message.
    pub fn reuse(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.extend_from_slice(&CDR_LE_HEADER);
        Self { buf }
    }

    /// Pads with zeros so that the next byte is aligned to `n` relative to the end of the header.
    #[inline]
    pub fn align(&mut self, n: usize) {
        let pos = self.buf.len() - 4;
        let pad = (n - pos % n) % n;
        self.buf.resize(self.buf.len() + pad, 0);
    }

    /// Writes one byte.
    #[inline]
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// Writes a signed byte.
    #[inline]
    pub fn i8(&mut self, v: i8) {
        self.buf.push(v as u8);
    }

    /// Writes a boolean as one byte (0 or 1).
    #[inline]
    pub fn bool(&mut self, v: bool) {
        self.buf.push(v as u8);
    }

    /// Writes an aligned `u16`.
    #[inline]
    pub fn u16(&mut self, v: u16) {
        self.align(2);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes an aligned `i16`.
    #[inline]
    pub fn i16(&mut self, v: i16) {
        self.align(2);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes an aligned `u32`.
    #[inline]
    pub fn u32(&mut self, v: u32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes an aligned `i32`.
    #[inline]
    pub fn i32(&mut self, v: i32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes an aligned `u64`.
    #[inline]
    pub fn u64(&mut self, v: u64) {
        self.align(8);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes an aligned `i64`.
    #[inline]
    pub fn i64(&mut self, v: i64) {
        self.align(8);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes an aligned `f32`.
    #[inline]
    pub fn f32(&mut self, v: f32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes an aligned `f64`.
    #[inline]
    pub fn f64(&mut self, v: f64) {
        self.align(8);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes a string: length including the NUL terminator, the UTF-8 bytes, the NUL.
    pub fn string(&mut self, s: &str) {
        self.u32(s.len() as u32 + 1);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }

    /// Writes a sequence length (element count).
    #[inline]
    pub fn seq_len(&mut self, n: usize) {
        self.u32(n as u32);
    }

    /// Writes a `uint8[]` sequence: count, then the raw bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.seq_len(b.len());
        self.buf.extend_from_slice(b);
    }

    /// Writes a fixed-size `float64[N]` array (no count).
    pub fn f64_array(&mut self, v: &[f64]) {
        if v.is_empty() {
            return;
        }
        self.align(8);
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }

    /// Writes a `float64[]` sequence: count, then the values.
    pub fn f64_seq(&mut self, v: &[f64]) {
        self.seq_len(v.len());
        self.f64_array(v);
    }

    /// Bytes written so far, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing but the header was written.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == 4
    }

    /// The serialized message (header included).
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// The serialized message so far (header included).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Reads plain CDR values from a serialized message (header included), in either byte order.
#[derive(Debug, Clone)]
pub struct CdrReader<'a> {
    data: &'a [u8],
    pos: usize,
    little: bool,
}

macro_rules! read_prim {
    ($name:ident, $t:ty, $n:expr) => {
        #[doc = concat!("Reads an aligned `", stringify!($t), "`.")]
        #[inline]
        pub fn $name(&mut self) -> CdrResult<$t> {
            self.align($n)?;
            let b: [u8; $n] = self.take($n)?.try_into().expect("length checked");
            Ok(if self.little {
                <$t>::from_le_bytes(b)
            } else {
                <$t>::from_be_bytes(b)
            })
        }
    };
}

impl<'a> CdrReader<'a> {
    /// Starts reading `data`, checking its encapsulation header.
    pub fn new(data: &'a [u8]) -> CdrResult<Self> {
        if data.len() < 4 {
            return Err(CdrError {
                offset: 0,
                why: format!("message of {} bytes has no CDR header", data.len()),
            });
        }
        let little = match data[..2] {
            [0x00, 0x01] => true,
            [0x00, 0x00] => false,
            _ => {
                return Err(CdrError {
                    offset: 0,
                    why: format!(
                        "unsupported encapsulation {:02x} {:02x} (expected plain CDR 00 00/00 01)",
                        data[0], data[1]
                    ),
                })
            }
        };
        Ok(Self {
            data,
            pos: 4,
            little,
        })
    }

    fn err(&self, why: impl Into<String>) -> CdrError {
        CdrError {
            offset: self.pos,
            why: why.into(),
        }
    }

    /// Skips padding so that the next byte is aligned to `n` relative to the end of the header.
    #[inline]
    pub fn align(&mut self, n: usize) -> CdrResult<()> {
        let rel = self.pos - 4;
        let pad = (n - rel % n) % n;
        if self.pos + pad > self.data.len() {
            // Trailing padding of the last field may be absent; only fail when a value follows.
            self.pos = self.data.len();
            return Ok(());
        }
        self.pos += pad;
        Ok(())
    }

    /// Takes `n` raw bytes.
    #[inline]
    pub fn take(&mut self, n: usize) -> CdrResult<&'a [u8]> {
        if self.data.len() - self.pos < n {
            return Err(self.err(format!(
                "needs {n} more bytes, only {} left",
                self.data.len() - self.pos
            )));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> CdrResult<u8> {
        Ok(self.take(1)?[0])
    }

    /// Reads a signed byte.
    pub fn i8(&mut self) -> CdrResult<i8> {
        Ok(self.take(1)?[0] as i8)
    }

    /// Reads a boolean (any non-zero byte is rejected except 1).
    pub fn bool(&mut self) -> CdrResult<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.err(format!("boolean byte {v} is neither 0 nor 1"))),
        }
    }

    read_prim!(u16, u16, 2);
    read_prim!(i16, i16, 2);
    read_prim!(u32, u32, 4);
    read_prim!(i32, i32, 4);
    read_prim!(u64, u64, 8);
    read_prim!(i64, i64, 8);
    read_prim!(f32, f32, 4);
    read_prim!(f64, f64, 8);

    /// Reads a sequence count, checking that at least `count × min_elem` bytes remain.
    pub fn seq_len(&mut self, min_elem: usize) -> CdrResult<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_elem) > self.remaining() {
            return Err(self.err(format!(
                "sequence of {n} elements does not fit in the {} bytes left",
                self.remaining()
            )));
        }
        Ok(n)
    }

    /// Reads a string (length with NUL, bytes, NUL), checking UTF-8.
    pub fn string(&mut self) -> CdrResult<String> {
        let n = self.u32()? as usize;
        if n == 0 {
            // Some writers encode the empty string with no terminator.
            return Ok(String::new());
        }
        let start = self.pos;
        let b = self.take(n)?;
        if b[n - 1] != 0 {
            self.pos = start;
            return Err(self.err("string is not NUL-terminated"));
        }
        std::str::from_utf8(&b[..n - 1])
            .map(str::to_owned)
            .map_err(|e| CdrError {
                offset: start,
                why: format!("string is not UTF-8: {e}"),
            })
    }

    /// Reads a `uint8[]` sequence.
    pub fn bytes(&mut self) -> CdrResult<&'a [u8]> {
        let n = self.seq_len(1)?;
        self.take(n)
    }

    /// Reads a fixed-size `float64[N]` array.
    pub fn f64_array<const N: usize>(&mut self) -> CdrResult<[f64; N]> {
        let mut out = [0.0; N];
        for v in out.iter_mut() {
            *v = self.f64()?;
        }
        Ok(out)
    }

    /// Reads a `float64[]` sequence.
    pub fn f64_seq(&mut self) -> CdrResult<Vec<f64>> {
        let n = self.seq_len(8)?;
        (0..n).map(|_| self.f64()).collect()
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Current offset in the message, header included.
    pub fn position(&self) -> usize {
        self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_relative_to_the_header() {
        let mut w = CdrWriter::new();
        w.u8(7);
        w.u32(0x01020304);
        w.u8(1);
        w.f64(1.5);
        w.string("ab");
        w.u16(9);
        let b = w.into_bytes();
        assert_eq!(&b[..4], &CDR_LE_HEADER);
        // u8 at 0, pad to 4, u32 at 4..8, u8 at 8, pad to 16, f64 at 16..24, string len at 24, "ab\0" 28..31,
        // pad to 32, u16 at 32..34.
        assert_eq!(b.len(), 4 + 34);
        assert_eq!(&b[4 + 4..4 + 8], &[4, 3, 2, 1]);
        assert_eq!(&b[4 + 24..4 + 31], &[3, 0, 0, 0, b'a', b'b', 0]);
        let mut r = CdrReader::new(&b).unwrap();
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u32().unwrap(), 0x01020304);
        assert!(r.bool().unwrap());
        assert_eq!(r.f64().unwrap(), 1.5);
        assert_eq!(r.string().unwrap(), "ab");
        assert_eq!(r.u16().unwrap(), 9);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn big_endian_is_read() {
        let b = [
            0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0,
        ];
        let mut r = CdrReader::new(&b).unwrap();
        assert_eq!(r.u32().unwrap(), 2);
        assert_eq!(r.f64().unwrap(), 1.5);
    }

    #[test]
    fn short_and_bad_input_is_an_error_with_offset() {
        let mut w = CdrWriter::new();
        w.string("hello");
        let b = w.into_bytes();
        let mut r = CdrReader::new(&b[..b.len() - 2]).unwrap();
        let e = r.string().unwrap_err();
        assert_eq!(e.offset, 8);
        assert!(CdrReader::new(&[1, 2]).is_err());
        assert!(CdrReader::new(&[9, 9, 0, 0]).is_err());
        let mut w = CdrWriter::new();
        w.u32(1_000_000);
        let b = w.into_bytes();
        assert!(CdrReader::new(&b).unwrap().bytes().is_err());
    }
}
