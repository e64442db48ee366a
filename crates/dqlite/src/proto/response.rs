//! Responses a node sends. Decoding checks every count against the bytes present before
//! allocating, so a hostile or corrupt message costs at most its own size.

use super::codec::{Reader, Writer};
use super::value::{decode_row, encode_row};
use super::{ProtocolError, Role, Value, frame, response_type as t};

/// Word that ends a ROWS message when more messages follow.
pub(crate) const ROWS_PART: u64 = 0xeeee_eeee_eeee_eeee;
/// Word that ends the last ROWS message of a query.
pub(crate) const ROWS_DONE: u64 = 0xffff_ffff_ffff_ffff;

/// A node of the raft configuration, as CLUSTER reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// Node id.
    pub id: u64,
    /// Address the node is reached at.
    pub address: String,
    /// Role (present with CLUSTER format 1; `None` for format 0).
    pub role: Option<Role>,
}

/// A file of a DUMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// File name (`<db>` and `<db>-wal`).
    pub name: String,
    /// Content.
    pub data: Vec<u8>,
}

/// How a ROWS message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsEnd {
    /// More ROWS messages follow without another request.
    Part,
    /// The query is complete.
    Done,
}

/// One ROWS message: the column names (repeated in every message) and a batch of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct RowsBatch {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, each with one value per column.
    pub rows: Vec<Vec<Value>>,
    /// Whether more messages follow.
    pub end: RowsEnd,
}

/// A response message.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The request failed: an SQLite (extended) error code or a dqlite/raft code, and a message.
    Failure {
        /// Error code.
        code: u64,
        /// Message text.
        message: String,
    },
    /// Answer to LEADER: the leader's id and address (0 and "" when unknown).
    Server {
        /// Leader id.
        id: u64,
        /// Leader address.
        address: String,
    },
    /// Answer to CLIENT.
    Welcome {
        /// Heartbeat timeout in milliseconds (not enforced by 1.11).
        heartbeat_timeout: u64,
    },
    /// Answer to CLUSTER.
    Servers(Vec<NodeInfo>),
    /// Answer to OPEN.
    Db {
        /// Database id (always 0 in 1.11).
        id: u32,
    },
    /// Answer to PREPARE.
    Stmt {
        /// Database id.
        db: u32,
        /// Statement id.
        id: u32,
        /// Number of parameters the statement takes.
        params: u64,
    },
    /// Answer to EXEC and EXEC_SQL.
    Result {
        /// Last inserted rowid.
        last_insert_id: u64,
        /// Rows changed by the (last) statement.
        rows_affected: u64,
    },
    /// One batch of a query's rows.
    Rows(RowsBatch),
    /// Success without data.
    Empty,
    /// Answer to DUMP.
    Files(Vec<File>),
    /// Answer to DESCRIBE.
    Metadata {
        /// Failure domain.
        failure_domain: u64,
        /// Weight.
        weight: u64,
    },
}

impl Response {
    /// The response's type code.
    pub fn kind(&self) -> u8 {
        match self {
            Response::Failure { .. } => t::FAILURE,
            Response::Server { .. } => t::SERVER,
            Response::Welcome { .. } => t::WELCOME,
            Response::Servers(_) => t::SERVERS,
            Response::Db { .. } => t::DB,
            Response::Stmt { .. } => t::STMT,
            Response::Result { .. } => t::RESULT,
            Response::Rows(_) => t::ROWS,
            Response::Empty => t::EMPTY,
            Response::Files(_) => t::FILES,
            Response::Metadata { .. } => t::METADATA,
        }
    }

    /// The message name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Response::Failure { .. } => "FAILURE",
            Response::Server { .. } => "SERVER",
            Response::Welcome { .. } => "WELCOME",
            Response::Servers(_) => "SERVERS",
            Response::Db { .. } => "DB",
            Response::Stmt { .. } => "STMT",
            Response::Result { .. } => "RESULT",
            Response::Rows(_) => "ROWS",
            Response::Empty => "EMPTY",
            Response::Files(_) => "FILES",
            Response::Metadata { .. } => "METADATA",
        }
    }

    /// Encodes the full message (what a server does; used by tests and fuzzing).
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        frame(self.kind(), |w| self.encode_body(w))
    }

    fn encode_body(&self, w: &mut Writer) -> Result<(), ProtocolError> {
        match self {
            Response::Failure { code, message } => {
                w.u64(*code);
                w.text(message)?;
            }
            Response::Server { id, address } => {
                w.u64(*id);
                w.text(address)?;
            }
            Response::Welcome { heartbeat_timeout } => w.u64(*heartbeat_timeout),
            Response::Servers(nodes) => {
                w.u64(nodes.len() as u64);
                for node in nodes {
                    w.u64(node.id);
                    w.text(&node.address)?;
                    if let Some(role) = node.role {
                        w.u64(role.code());
                    }
                }
            }
            Response::Db { id } => {
                w.u32(*id);
                w.u32(0);
            }
            Response::Stmt { db, id, params } => {
                w.u32(*db);
                w.u32(*id);
                w.u64(*params);
            }
            Response::Result { last_insert_id, rows_affected } => {
                w.u64(*last_insert_id);
                w.u64(*rows_affected);
            }
            Response::Rows(batch) => {
                w.u64(batch.columns.len() as u64);
                for name in &batch.columns {
                    w.text(name)?;
                }
                for row in &batch.rows {
                    encode_row(row, w)?;
                }
                w.u64(match batch.end {
                    RowsEnd::Part => ROWS_PART,
                    RowsEnd::Done => ROWS_DONE,
                });
            }
            Response::Empty => w.u64(0),
            Response::Files(files) => {
                w.u64(files.len() as u64);
                for file in files {
                    w.text(&file.name)?;
                    w.u64(file.data.len() as u64);
                    w.buf.extend_from_slice(&file.data);
                    w.pad();
                }
            }
            Response::Metadata { failure_domain, weight } => {
                w.u64(*failure_domain);
                w.u64(*weight);
            }
        }
        Ok(())
    }

    /// Decodes a response body of type `kind`. SERVERS does not say which format it carries, so
    /// the caller passes the format it asked CLUSTER for.
    pub fn decode(kind: u8, body: &[u8], cluster_format: u64) -> Result<Response, ProtocolError> {
        let mut r = Reader::new(body);
        let response = match kind {
            t::FAILURE => match decode_failure_after_columns(body) {
                Some(failure) => return Ok(failure),
                None => Response::Failure { code: r.u64()?, message: r.text()?.to_owned() },
            },
            t::SERVER => Response::Server { id: r.u64()?, address: r.text()?.to_owned() },
            t::WELCOME => Response::Welcome { heartbeat_timeout: r.u64()? },
            t::SERVERS => Response::Servers(decode_servers(&mut r, cluster_format)?),
            t::DB => {
                let id = r.u32()?;
                r.u32()?;
                Response::Db { id }
            }
            t::STMT => Response::Stmt { db: r.u32()?, id: r.u32()?, params: r.u64()? },
            t::RESULT => Response::Result { last_insert_id: r.u64()?, rows_affected: r.u64()? },
            t::ROWS => Response::Rows(decode_rows(&mut r)?),
            t::EMPTY => {
                r.u64()?;
                Response::Empty
            }
            t::FILES => Response::Files(decode_files(&mut r)?),
            t::METADATA => Response::Metadata { failure_domain: r.u64()?, weight: r.u64()? },
            kind => return Err(ProtocolError::UnknownMessageType { kind }),
        };
        // A FAILURE with bytes after its message is one libdqlite garbled in a way not
        // recognised above; the header's size keeps the framing intact, so the rest is skipped.
        if !r.is_empty() && !matches!(response, Response::Failure { .. }) {
            return Err(ProtocolError::TrailingBytes { kind: response.name(), extra: r.remaining() });
        }
        Ok(response)
    }
}

/// libdqlite 1.11 builds a query's response in place: when the statement fails after the
/// column names were written (e.g. it was interrupted), it appends the code and message to
/// them and to the rows of the batch it had started, and sends the lot as a FAILURE.
/// Recognises exactly that layout (a column count, that many names, whole rows, a code, a
/// message, nothing after) and returns the real failure.
fn decode_failure_after_columns(body: &[u8]) -> Option<Response> {
    let mut r = Reader::new(body);
    let columns = r.u64().ok()?;
    // Each name takes at least 8 bytes: a count that cannot fit is no column header.
    if columns == 0 || columns > (r.remaining() / 8) as u64 {
        return None;
    }
    for _ in 0..columns {
        r.text().ok()?;
    }
    // Each row takes at least 8 bytes, so this ends.
    loop {
        if let Some(failure) = failure_tail(&body[r.offset()..]) {
            return Some(failure);
        }
        decode_row(columns as usize, &mut r).ok()?;
    }
}

/// A code and a message that end the body exactly.
fn failure_tail(rest: &[u8]) -> Option<Response> {
    let mut r = Reader::new(rest);
    let code = r.u64().ok()?;
    let message = r.text().ok()?.to_owned();
    r.is_empty().then_some(Response::Failure { code, message })
}

/// Checks that `count` items of at least `min_size` bytes each can fit in what is left.
fn bounded_count(r: &Reader<'_>, count: u64, min_size: usize, field: &'static str) -> Result<usize, ProtocolError> {
    usize::try_from(count)
        .ok()
        .filter(|&n| n <= r.remaining() / min_size)
        .ok_or(ProtocolError::InvalidField { field, value: count })
}

fn decode_servers(r: &mut Reader<'_>, format: u64) -> Result<Vec<NodeInfo>, ProtocolError> {
    let count = r.u64()?;
    let count = bounded_count(r, count, 16, "server count")?;
    let mut nodes = Vec::with_capacity(count);
    for _ in 0..count {
        let id = r.u64()?;
        let address = r.text()?.to_owned();
        let role = if format >= 1 { Some(Role::from_code(r.u64()?)?) } else { None };
        nodes.push(NodeInfo { id, address, role });
    }
    Ok(nodes)
}

fn decode_rows(r: &mut Reader<'_>) -> Result<RowsBatch, ProtocolError> {
    let count = r.u64()?;
    let columns = bounded_count(r, count, 8, "column count")?;
    if columns == 0 {
        return Err(ProtocolError::InvalidField { field: "column count", value: 0 });
    }
    let names = (0..columns).map(|_| r.text().map(str::to_owned)).collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::new();
    // A row header's nibbles are type codes (1..=11), so a word of all 0xE or all 0xF nibbles
    // can only be the end marker.
    let end = loop {
        match r.peek_u64()? {
            ROWS_PART => break RowsEnd::Part,
            ROWS_DONE => break RowsEnd::Done,
            _ => rows.push(decode_row(columns, r)?),
        }
    };
    r.u64()?;
    Ok(RowsBatch { columns: names, rows, end })
}

fn decode_files(r: &mut Reader<'_>) -> Result<Vec<File>, ProtocolError> {
    let count = r.u64()?;
    let count = bounded_count(r, count, 16, "file count")?;
    let mut files = Vec::with_capacity(count);
    for _ in 0..count {
        let name = r.text()?.to_owned();
        let size = r.u64()?;
        let size = bounded_count(r, size, 1, "file size")?;
        let data = r.bytes(size)?.to_vec();
        r.align()?;
        files.push(File { name, data });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{HEADER_SIZE, Header};

    fn every_response() -> Vec<(Response, u64)> {
        vec![
            (Response::Failure { code: 10250, message: "not leader".into() }, 0),
            (Response::Server { id: 1, address: "@n1".into() }, 0),
            (Response::Server { id: 0, address: String::new() }, 0),
            (Response::Welcome { heartbeat_timeout: 15000 }, 0),
            (
                Response::Servers(vec![
                    NodeInfo { id: 1, address: "a:1".into(), role: None },
                    NodeInfo { id: 2, address: "b:2".into(), role: None },
                ]),
                0,
            ),
            (Response::Servers(vec![NodeInfo { id: 1, address: "a:1".into(), role: Some(Role::StandBy) }]), 1),
            (Response::Db { id: 0 }, 0),
            (Response::Stmt { db: 0, id: 3, params: 2 }, 0),
            (Response::Result { last_insert_id: 5, rows_affected: 1 }, 0),
            (
                Response::Rows(RowsBatch {
                    columns: vec!["a".into(), "b".into(), "c".into()],
                    rows: vec![
                        vec![Value::Integer(1), Value::Text("x".into()), Value::Null],
                        vec![Value::Float(1.5), Value::Blob(vec![1; 20]), Value::Boolean(true)],
                    ],
                    end: RowsEnd::Part,
                }),
                0,
            ),
            (Response::Rows(RowsBatch { columns: vec!["only".into()], rows: vec![], end: RowsEnd::Done }), 0),
            (Response::Empty, 0),
            (
                Response::Files(vec![
                    File { name: "db".into(), data: vec![7; 4096] },
                    File { name: "db-wal".into(), data: vec![] },
                ]),
                0,
            ),
            (Response::Metadata { failure_domain: 3, weight: 9 }, 0),
        ]
    }

    #[test]
    fn every_response_round_trips() {
        for (resp, format) in every_response() {
            let bytes = resp.encode().unwrap();
            let header = Header::decode(bytes[..HEADER_SIZE].try_into().unwrap());
            assert_eq!(header.kind, resp.kind());
            let back = Response::decode(header.kind, &bytes[HEADER_SIZE..], format).unwrap();
            assert_eq!(back, resp);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for (resp, format) in every_response() {
            let bytes = resp.encode().unwrap();
            let body = &bytes[HEADER_SIZE..];
            for cut in 0..body.len() {
                assert!(Response::decode(resp.kind(), &body[..cut], format).is_err(), "{resp:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn lying_counts_do_not_allocate() {
        let mut body = u64::MAX.to_le_bytes().to_vec();
        body.extend_from_slice(&[0; 16]);
        for kind in [t::SERVERS, t::ROWS, t::FILES] {
            assert!(matches!(Response::decode(kind, &body, 1), Err(ProtocolError::InvalidField { .. })));
        }
    }

    #[test]
    fn rows_with_zero_columns_or_bad_types_are_errors() {
        assert!(Response::decode(t::ROWS, &[0; 16], 0).is_err());
        // One column named "a", then a row whose type nibble is 6 (not a type).
        let mut body = 1u64.to_le_bytes().to_vec();
        body.extend_from_slice(b"a\0\0\0\0\0\0\0");
        body.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&[0; 8]);
        body.extend_from_slice(&ROWS_DONE.to_le_bytes());
        assert_eq!(Response::decode(t::ROWS, &body, 0), Err(ProtocolError::UnknownValueType { code: 6 }));
    }

    #[test]
    fn trailing_bytes_and_unknown_types_are_errors() {
        assert!(matches!(Response::decode(t::EMPTY, &[0; 16], 0), Err(ProtocolError::TrailingBytes { .. })));
        assert!(matches!(Response::decode(42, &[0; 8], 0), Err(ProtocolError::UnknownMessageType { kind: 42 })));
        // A FAILURE behind the column names of the query that failed (as libdqlite 1.11 sends
        // one when a statement is interrupted).
        let mut body = 1u64.to_le_bytes().to_vec();
        body.extend_from_slice(b"count(*)\0\0\0\0\0\0\0\0");
        body.extend_from_slice(&9u64.to_le_bytes());
        body.extend_from_slice(b"interrupted\0\0\0\0\0");
        let failure = Response::decode(t::FAILURE, &body, 0).unwrap();
        assert_eq!(failure, Response::Failure { code: 9, message: "interrupted".into() });
        // The same behind the rows of the batch the statement was filling (two columns).
        let mut w = Writer::default();
        w.u64(2);
        w.text("n").unwrap();
        w.text("pad").unwrap();
        for n in 0..3 {
            encode_row(&[Value::Integer(n), Value::Text("0000".into())], &mut w).unwrap();
        }
        w.u64(9);
        w.text("interrupted").unwrap();
        let failure = Response::decode(t::FAILURE, &w.buf, 0).unwrap();
        assert_eq!(failure, Response::Failure { code: 9, message: "interrupted".into() });
        // Other bytes after a plain FAILURE are skipped.
        let mut body = 19u64.to_le_bytes().to_vec();
        body.extend_from_slice(b"constraint\0\0\0\0\0\0");
        body.extend_from_slice(&[0xff; 8]);
        let failure = Response::decode(t::FAILURE, &body, 0).unwrap();
        assert_eq!(failure, Response::Failure { code: 19, message: "constraint".into() });
        assert!(
            Response::decode(
                t::SERVERS,
                &[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'a', 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0],
                1
            )
            .is_err()
        );
    }
}
