//! Primitive encoding of dqlite's wire format: little-endian integers, NUL-terminated text and
//! length-prefixed blobs, each padded to a multiple of 8 bytes.
//!
//! [`Reader`] checks every length against the bytes actually present before it slices or
//! allocates, so a malformed message yields a [`ProtocolError`] and never a panic.

use super::ProtocolError;

/// Rounds `n` up to the next multiple of 8.
pub(crate) const fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

/// Appends wire-format values to a byte buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }

    /// Text is NUL-terminated on the wire, so an interior NUL would silently cut it short.
    pub(crate) fn text(&mut self, v: &str) -> Result<(), ProtocolError> {
        if v.as_bytes().contains(&0) {
            return Err(ProtocolError::NulInText);
        }
        self.buf.extend_from_slice(v.as_bytes());
        self.buf.push(0);
        self.pad();
        Ok(())
    }

    pub(crate) fn blob(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.buf.extend_from_slice(v);
        self.pad();
    }

    /// Zero-fills up to the next 8-byte boundary.
    pub(crate) fn pad(&mut self) {
        let len = pad8(self.buf.len());
        self.buf.resize(len, 0);
    }
}

/// Reads wire-format values from a message body, bounds-checked.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    /// Takes the next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.remaining() {
            return Err(ProtocolError::Truncated { offset: self.pos, needed: n, available: self.remaining() });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, ProtocolError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub(crate) fn f64(&mut self) -> Result<f64, ProtocolError> {
        Ok(f64::from_bits(self.u64()?))
    }

    /// Reads the next word without consuming it.
    pub(crate) fn peek_u64(&self) -> Result<u64, ProtocolError> {
        let mut copy = Reader { buf: self.buf, pos: self.pos };
        copy.u64()
    }

    pub(crate) fn text(&mut self) -> Result<&'a str, ProtocolError> {
        let start = self.pos;
        let rest = &self.buf[start..];
        let len = rest.iter().position(|&b| b == 0).ok_or(ProtocolError::UnterminatedText { offset: start })?;
        let text = std::str::from_utf8(&rest[..len]).map_err(|_| ProtocolError::InvalidUtf8 { offset: start })?;
        self.skip_padded(len + 1)?;
        Ok(text)
    }

    pub(crate) fn blob(&mut self) -> Result<&'a [u8], ProtocolError> {
        let len = self.u64()?;
        let len = usize::try_from(len).ok().filter(|&n| n <= self.remaining()).ok_or(ProtocolError::Truncated {
            offset: self.pos,
            needed: usize::try_from(len).unwrap_or(usize::MAX),
            available: self.remaining(),
        })?;
        let start = self.pos;
        self.skip_padded(len)?;
        Ok(&self.buf[start..start + len])
    }

    /// Skips `n` bytes plus the padding that rounds them up to a word. A message may end right
    /// after the data without the padding only if the sender was sloppy; dqlite always pads.
    fn skip_padded(&mut self, n: usize) -> Result<(), ProtocolError> {
        self.bytes(pad8(n))?;
        Ok(())
    }

    /// Skips zero padding up to the next word boundary relative to the start of the body.
    pub(crate) fn align(&mut self) -> Result<(), ProtocolError> {
        let aligned = pad8(self.pos);
        self.bytes(aligned - self.pos)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_nul_terminated_and_padded() {
        let mut w = Writer::default();
        w.text("abcdefg").unwrap();
        assert_eq!(w.buf, b"abcdefg\0");
        w.text("abcdefgh").unwrap();
        assert_eq!(w.buf.len(), 8 + 16);
        w.text("").unwrap();
        assert_eq!(w.buf.len(), 8 + 16 + 8);
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.text().unwrap(), "abcdefg");
        assert_eq!(r.text().unwrap(), "abcdefgh");
        assert_eq!(r.text().unwrap(), "");
        assert!(r.is_empty());
    }

    #[test]
    fn interior_nul_is_refused() {
        assert_eq!(Writer::default().text("a\0b"), Err(ProtocolError::NulInText));
    }

    #[test]
    fn blob_round_trip_and_padding() {
        let mut w = Writer::default();
        w.blob(&[1, 2, 3]);
        assert_eq!(w.buf.len(), 16);
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.blob().unwrap(), &[1, 2, 3]);
        assert!(r.is_empty());
    }

    #[test]
    fn lying_lengths_are_errors() {
        let mut w = Writer::default();
        w.u64(u64::MAX);
        assert!(matches!(Reader::new(&w.buf).blob(), Err(ProtocolError::Truncated { .. })));
        assert!(matches!(Reader::new(b"abc").text(), Err(ProtocolError::UnterminatedText { .. })));
        assert!(matches!(Reader::new(b"\xff\xfe\0\0\0\0\0\0").text(), Err(ProtocolError::InvalidUtf8 { .. })));
        // Text that ends at its NUL without the padding that must follow.
        assert!(matches!(Reader::new(b"ab\0").text(), Err(ProtocolError::Truncated { .. })));
        assert!(matches!(Reader::new(&[1, 2]).u32(), Err(ProtocolError::Truncated { .. })));
    }
}
