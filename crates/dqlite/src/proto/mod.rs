//! dqlite's wire protocol (version 1, as libdqlite 1.11 speaks it): message framing, requests,
//! responses and values. Pure encode/decode with no I/O, so it can be tested and fuzzed alone.
//!
//! Every message is an 8-byte header (`u32` body length in words, `u8` type, `u8` flags,
//! `u16` extra, little-endian) followed by a body whose length is a multiple of 8.

pub(crate) mod codec;
mod request;
mod response;
mod value;

pub use request::{Request, Role};
pub use response::{File, NodeInfo, Response, RowsBatch, RowsEnd};
pub use value::{MAX_PARAMS, Value};

/// The protocol version this crate speaks, sent as a `u64` right after connecting.
pub const PROTOCOL_VERSION: u64 = 1;

/// Size of a message header in bytes.
pub const HEADER_SIZE: usize = 8;

/// Request type codes. `HEARTBEAT` (2) and `CONNECT` (11) are deliberately absent: libdqlite
/// 1.11 never answers a heartbeat (the connection stalls) and CONNECT hands the socket to raft.
pub mod request_type {
    #![allow(missing_docs)]
    pub const LEADER: u8 = 0;
    pub const CLIENT: u8 = 1;
    pub const OPEN: u8 = 3;
    pub const PREPARE: u8 = 4;
    pub const EXEC: u8 = 5;
    pub const QUERY: u8 = 6;
    pub const FINALIZE: u8 = 7;
    pub const EXEC_SQL: u8 = 8;
    pub const QUERY_SQL: u8 = 9;
    pub const INTERRUPT: u8 = 10;
    pub const ADD: u8 = 12;
    pub const ASSIGN: u8 = 13;
    pub const REMOVE: u8 = 14;
    pub const DUMP: u8 = 15;
    pub const CLUSTER: u8 = 16;
    pub const TRANSFER: u8 = 17;
    pub const DESCRIBE: u8 = 18;
    pub const WEIGHT: u8 = 19;
}

/// Response type codes.
pub mod response_type {
    #![allow(missing_docs)]
    pub const FAILURE: u8 = 0;
    pub const SERVER: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const SERVERS: u8 = 3;
    pub const DB: u8 = 4;
    pub const STMT: u8 = 5;
    pub const RESULT: u8 = 6;
    pub const ROWS: u8 = 7;
    pub const EMPTY: u8 = 8;
    pub const FILES: u8 = 9;
    pub const METADATA: u8 = 10;
}

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Body length in 8-byte words.
    pub words: u32,
    /// Request or response type code.
    pub kind: u8,
    /// Always 0 in protocol 1.11 (later versions call it "schema").
    pub flags: u8,
    /// Unused, 0.
    pub extra: u16,
}

impl Header {
    /// Body length in bytes.
    pub fn body_len(&self) -> u64 {
        u64::from(self.words) * 8
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[..4].copy_from_slice(&self.words.to_le_bytes());
        out[4] = self.kind;
        out[5] = self.flags;
        out[6..].copy_from_slice(&self.extra.to_le_bytes());
        out
    }

    /// Decodes a header.
    pub fn decode(bytes: [u8; HEADER_SIZE]) -> Header {
        Header {
            words: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            kind: bytes[4],
            flags: bytes[5],
            extra: u16::from_le_bytes([bytes[6], bytes[7]]),
        }
    }
}

/// Wraps an encoded body into a full message (header + body).
pub(crate) fn frame(
    kind: u8,
    body_writer: impl FnOnce(&mut codec::Writer) -> Result<(), ProtocolError>,
) -> Result<Vec<u8>, ProtocolError> {
    let mut w = codec::Writer { buf: vec![0; HEADER_SIZE] };
    body_writer(&mut w)?;
    w.pad();
    let body = w.buf.len() - HEADER_SIZE;
    let words = u32::try_from(body / 8)
        .map_err(|_| ProtocolError::FrameTooLarge { size: body as u64, limit: u64::from(u32::MAX) * 8 })?;
    let header = Header { words, kind, flags: 0, extra: 0 };
    w.buf[..HEADER_SIZE].copy_from_slice(&header.encode());
    Ok(w.buf)
}

/// A message could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The body ended before a field did.
    #[error("message truncated at byte {offset}: needed {needed} bytes, {available} left")]
    Truncated {
        /// Where the field started.
        offset: usize,
        /// Bytes the field needed.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A text field has no terminating NUL.
    #[error("text at byte {offset} is not NUL-terminated")]
    UnterminatedText {
        /// Where the text started.
        offset: usize,
    },
    /// A text field is not UTF-8.
    #[error("text at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Where the text started.
        offset: usize,
    },
    /// A text value to send contains a NUL byte, which the wire format cannot carry.
    #[error("text contains a NUL byte, which dqlite's wire format cannot carry (send it as a blob)")]
    NulInText,
    /// More parameters than protocol 1 can carry.
    #[error("{count} parameters given; dqlite 1.11 accepts at most 255 per statement")]
    TooManyParams {
        /// Parameters given.
        count: usize,
    },
    /// An unknown value type code in a row or parameter list.
    #[error("unknown value type {code}")]
    UnknownValueType {
        /// The code.
        code: u8,
    },
    /// An unknown message type.
    #[error("unknown message type {kind}")]
    UnknownMessageType {
        /// The code.
        kind: u8,
    },
    /// A message larger than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Announced size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Bytes left over after a complete message.
    #[error("{extra} unexpected bytes after a {kind} message")]
    TrailingBytes {
        /// Message name.
        kind: &'static str,
        /// Bytes left.
        extra: usize,
    },
    /// A field holds a value the protocol does not allow.
    #[error("invalid {field}: {value}")]
    InvalidField {
        /// Field name.
        field: &'static str,
        /// The offending value.
        value: u64,
    },
}
