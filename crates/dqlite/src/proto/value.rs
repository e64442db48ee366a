//! SQL values as dqlite carries them, and the two tuple layouts that hold them: parameter lists
//! (a count byte and one type byte per value) and result rows (one 4-bit type per column).

use super::ProtocolError;
use super::codec::{Reader, Writer, pad8};

/// dqlite type codes, shared by parameters and rows.
pub(crate) mod code {
    pub(crate) const INTEGER: u8 = 1;
    pub(crate) const FLOAT: u8 = 2;
    pub(crate) const TEXT: u8 = 3;
    pub(crate) const BLOB: u8 = 4;
    pub(crate) const NULL: u8 = 5;
    pub(crate) const UNIXTIME: u8 = 9;
    pub(crate) const ISO8601: u8 = 10;
    pub(crate) const BOOLEAN: u8 = 11;
}

/// Most parameters one statement can carry in protocol version 1 (the count is one byte).
pub const MAX_PARAMS: usize = 255;

/// One SQL value.
///
/// `UnixTime`, `Iso8601` and `Boolean` appear in rows when the column's declared type is
/// `DATETIME`/`DATE`/`TIMESTAMP` or `BOOLEAN`. libdqlite 1.11 refuses `UnixTime` as a parameter,
/// so the client rejects it before sending.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// 64-bit signed integer.
    Integer(i64),
    /// IEEE-754 double.
    Float(f64),
    /// UTF-8 text without interior NUL bytes.
    Text(String),
    /// Raw bytes.
    Blob(Vec<u8>),
    /// SQL NULL.
    Null,
    /// Seconds since the Unix epoch, from an integer in a date/time column.
    UnixTime(i64),
    /// A date/time as text, from a text (or NULL, then empty) value in a date/time column.
    Iso8601(String),
    /// A value of a `BOOLEAN` column (a NULL there reads as `false`).
    Boolean(bool),
}

impl Value {
    pub(crate) fn type_code(&self) -> u8 {
        match self {
            Value::Integer(_) => code::INTEGER,
            Value::Float(_) => code::FLOAT,
            Value::Text(_) => code::TEXT,
            Value::Blob(_) => code::BLOB,
            Value::Null => code::NULL,
            Value::UnixTime(_) => code::UNIXTIME,
            Value::Iso8601(_) => code::ISO8601,
            Value::Boolean(_) => code::BOOLEAN,
        }
    }

    /// The SQLite storage class name, for display.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Integer(_) => "INTEGER",
            Value::Float(_) => "FLOAT",
            Value::Text(_) => "TEXT",
            Value::Blob(_) => "BLOB",
            Value::Null => "NULL",
            Value::UnixTime(_) => "UNIXTIME",
            Value::Iso8601(_) => "ISO8601",
            Value::Boolean(_) => "BOOLEAN",
        }
    }

    /// The integer inside `Integer`, `UnixTime` or `Boolean`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(v) | Value::UnixTime(v) => Some(*v),
            Value::Boolean(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The number inside `Float` or any integer-like value.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            other => other.as_i64().map(|v| v as f64),
        }
    }

    /// The text inside `Text` or `Iso8601`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) | Value::Iso8601(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes inside `Blob`.
    pub fn as_blob(&self) -> Option<&[u8]> {
        match self {
            Value::Blob(b) => Some(b),
            _ => None,
        }
    }

    /// True for SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    fn encode(&self, w: &mut Writer) -> Result<(), ProtocolError> {
        match self {
            Value::Integer(v) | Value::UnixTime(v) => w.i64(*v),
            Value::Float(v) => w.f64(*v),
            Value::Text(s) | Value::Iso8601(s) => w.text(s)?,
            Value::Blob(b) => w.blob(b),
            Value::Null => w.u64(0),
            Value::Boolean(b) => w.u64(u64::from(*b)),
        }
        Ok(())
    }

    fn decode(type_code: u8, r: &mut Reader<'_>) -> Result<Value, ProtocolError> {
        Ok(match type_code {
            code::INTEGER => Value::Integer(r.i64()?),
            code::FLOAT => Value::Float(r.f64()?),
            code::TEXT => Value::Text(r.text()?.to_owned()),
            code::BLOB => Value::Blob(r.blob()?.to_vec()),
            code::NULL => {
                r.u64()?;
                Value::Null
            }
            code::UNIXTIME => Value::UnixTime(r.i64()?),
            code::ISO8601 => Value::Iso8601(r.text()?.to_owned()),
            code::BOOLEAN => Value::Boolean(r.u64()? != 0),
            other => return Err(ProtocolError::UnknownValueType { code: other }),
        })
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Integer(v) | Value::UnixTime(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Text(s) | Value::Iso8601(s) => f.write_str(s),
            Value::Blob(b) => {
                f.write_str("x'")?;
                for byte in b {
                    write!(f, "{byte:02x}")?;
                }
                f.write_str("'")
            }
            Value::Null => f.write_str("NULL"),
            Value::Boolean(b) => write!(f, "{b}"),
        }
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self { Value::Integer(i64::from(v)) }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Appends a parameter tuple. An empty list writes nothing: the server then binds nothing.
pub(crate) fn encode_params(params: &[Value], w: &mut Writer) -> Result<(), ProtocolError> {
    if params.is_empty() {
        return Ok(());
    }
    let count = u8::try_from(params.len()).map_err(|_| ProtocolError::TooManyParams { count: params.len() })?;
    w.u8(count);
    for p in params {
        w.u8(p.type_code());
    }
    w.pad();
    for p in params {
        p.encode(w)?;
    }
    Ok(())
}

/// Reads a parameter tuple if any bytes are left (the inverse of [`encode_params`]).
pub(crate) fn decode_params(r: &mut Reader<'_>) -> Result<Vec<Value>, ProtocolError> {
    if r.is_empty() {
        return Ok(Vec::new());
    }
    let count = usize::from(r.u8()?);
    let types = r.bytes(count)?.to_vec();
    r.align()?;
    types.into_iter().map(|t| Value::decode(t, r)).collect()
}

/// Appends one row: 4-bit type codes (column 0 in the low nibble), padded, then the values.
pub(crate) fn encode_row(values: &[Value], w: &mut Writer) -> Result<(), ProtocolError> {
    let header_start = w.buf.len();
    w.buf.resize(header_start + pad8(values.len().div_ceil(2)), 0);
    for (i, v) in values.iter().enumerate() {
        w.buf[header_start + i / 2] |= v.type_code() << (4 * (i % 2));
    }
    values.iter().try_for_each(|v| v.encode(w))
}

/// Reads one row of `columns` values.
pub(crate) fn decode_row(columns: usize, r: &mut Reader<'_>) -> Result<Vec<Value>, ProtocolError> {
    let header = r.bytes(pad8(columns.div_ceil(2)))?;
    // Every value takes at least one word, which bounds the allocation by the message size.
    if columns > r.remaining() / 8 {
        return Err(ProtocolError::Truncated {
            offset: r.offset(),
            needed: columns.saturating_mul(8),
            available: r.remaining(),
        });
    }
    let mut row = Vec::with_capacity(columns);
    for i in 0..columns {
        let type_code = (header[i / 2] >> (4 * (i % 2))) & 0x0f;
        row.push(Value::decode(type_code, r)?);
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_values() -> Vec<Value> {
        vec![
            Value::Integer(-42),
            Value::Float(2.5),
            Value::Text("héllo".into()),
            Value::Blob(vec![0, 1, 2, 255]),
            Value::Null,
            Value::UnixTime(1_700_000_000),
            Value::Iso8601("2024-01-02 03:04:05+00:00".into()),
            Value::Boolean(true),
            Value::Text(String::new()),
            Value::Blob(Vec::new()),
        ]
    }

    #[test]
    fn params_round_trip() {
        let params = all_values();
        let mut w = Writer::default();
        encode_params(&params, &mut w).unwrap();
        assert_eq!(w.buf[0] as usize, params.len());
        assert_eq!(w.buf.len() % 8, 0);
        let mut r = Reader::new(&w.buf);
        assert_eq!(decode_params(&mut r).unwrap(), params);
        assert!(r.is_empty());
    }

    #[test]
    fn params_header_padding_matches_libdqlite() {
        // Count byte + 7 type bytes fill exactly one word; the 8th type starts a second word.
        let mut w = Writer::default();
        encode_params(&vec![Value::Null; 7], &mut w).unwrap();
        assert_eq!(w.buf.len(), 8 + 7 * 8);
        let mut w = Writer::default();
        encode_params(&vec![Value::Null; 8], &mut w).unwrap();
        assert_eq!(w.buf.len(), 16 + 8 * 8);
    }

    #[test]
    fn too_many_params_is_an_error() {
        let mut w = Writer::default();
        let err = encode_params(&vec![Value::Null; MAX_PARAMS + 1], &mut w).unwrap_err();
        assert_eq!(err, ProtocolError::TooManyParams { count: 256 });
        encode_params(&vec![Value::Null; MAX_PARAMS], &mut w).unwrap();
    }

    #[test]
    fn rows_round_trip_with_nibble_headers() {
        let row = all_values();
        let mut w = Writer::default();
        encode_row(&row, &mut w).unwrap();
        assert_eq!(w.buf[0], code::INTEGER | (code::FLOAT << 4));
        let mut r = Reader::new(&w.buf);
        assert_eq!(decode_row(row.len(), &mut r).unwrap(), row);
        assert!(r.is_empty());
    }

    #[test]
    fn unknown_value_type_is_an_error() {
        let buf = [0x07u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(decode_row(1, &mut Reader::new(&buf)), Err(ProtocolError::UnknownValueType { code: 7 }));
    }

    #[test]
    fn huge_column_counts_do_not_allocate() {
        let buf = [0x11u8; 16];
        assert!(matches!(decode_row(1 << 40, &mut Reader::new(&buf)), Err(ProtocolError::Truncated { .. })));
    }

    #[test]
    fn conversions_and_accessors() {
        assert_eq!(Value::from(7u32).as_i64(), Some(7));
        assert_eq!(Value::from(None::<i64>), Value::Null);
        assert_eq!(Value::from("x").as_str(), Some("x"));
        assert_eq!(Value::from(true).as_i64(), Some(1));
        assert_eq!(Value::Blob(vec![0xab]).to_string(), "x'ab'");
    }
}
