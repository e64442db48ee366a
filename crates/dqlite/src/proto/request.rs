//! Requests a client may send. The enum has no HEARTBEAT or CONNECT variant on purpose: those
//! would stall or hijack the connection on libdqlite 1.11, so they cannot be expressed.

use std::borrow::Cow;

use super::codec::{Reader, Writer};
use super::value::{decode_params, encode_params};
use super::{ProtocolError, Value, frame, request_type as t};

/// A node's role in the raft configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Votes and replicates.
    Voter,
    /// Replicates without voting; promoted first when a voter is lost.
    StandBy,
    /// Neither votes nor replicates.
    Spare,
}

impl Role {
    /// The wire code (0, 1, 2).
    pub fn code(self) -> u64 {
        match self {
            Role::Voter => 0,
            Role::StandBy => 1,
            Role::Spare => 2,
        }
    }

    /// The role for a wire code.
    pub fn from_code(code: u64) -> Result<Role, ProtocolError> {
        match code {
            0 => Ok(Role::Voter),
            1 => Ok(Role::StandBy),
            2 => Ok(Role::Spare),
            value => Err(ProtocolError::InvalidField { field: "role", value }),
        }
    }

    /// Lower-case name as microcluster prints it (`voter`, `stand-by`, `spare`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Voter => "voter",
            Role::StandBy => "stand-by",
            Role::Spare => "spare",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request message.
#[derive(Debug, Clone, PartialEq)]
pub enum Request<'a> {
    /// Ask a node who the leader is.
    Leader,
    /// Register the client (answered with WELCOME).
    Client {
        /// Client id (go-dqlite sends 0).
        id: u64,
    },
    /// Open a database on this connection (one per connection).
    Open {
        /// Database name.
        name: Cow<'a, str>,
    },
    /// Prepare the first statement of `sql`.
    Prepare {
        /// Database id from OPEN.
        db: u32,
        /// SQL text.
        sql: Cow<'a, str>,
    },
    /// Execute a prepared statement.
    Exec {
        /// Database id.
        db: u32,
        /// Statement id from PREPARE.
        stmt: u32,
        /// Parameters (always all of them: bindings persist between executions).
        params: Cow<'a, [Value]>,
    },
    /// Run a prepared read-only statement.
    Query {
        /// Database id.
        db: u32,
        /// Statement id.
        stmt: u32,
        /// Parameters.
        params: Cow<'a, [Value]>,
    },
    /// Release a prepared statement.
    Finalize {
        /// Database id.
        db: u32,
        /// Statement id.
        stmt: u32,
    },
    /// Execute SQL text (one or more statements; parameters bind to the first).
    ExecSql {
        /// Database id.
        db: u32,
        /// SQL text.
        sql: Cow<'a, str>,
        /// Parameters of the first statement.
        params: Cow<'a, [Value]>,
    },
    /// Run the first statement of read-only SQL text.
    QuerySql {
        /// Database id.
        db: u32,
        /// SQL text.
        sql: Cow<'a, str>,
        /// Parameters.
        params: Cow<'a, [Value]>,
    },
    /// Stop a streaming query (honoured only once the server sent every batch).
    Interrupt {
        /// Database id.
        db: u32,
    },
    /// Add a node to the configuration as a spare.
    Add {
        /// Node id.
        id: u64,
        /// Node address.
        address: Cow<'a, str>,
    },
    /// Change a node's role.
    Assign {
        /// Node id.
        id: u64,
        /// New role.
        role: Role,
    },
    /// Remove a node from the configuration.
    Remove {
        /// Node id.
        id: u64,
    },
    /// Dump the node's copy of a database (main file and WAL).
    Dump {
        /// Database name.
        name: Cow<'a, str>,
    },
    /// The node's raft configuration.
    Cluster {
        /// 0: id and address; 1: also the role.
        format: u64,
    },
    /// Hand leadership to another voter (0: let raft choose).
    Transfer {
        /// Target node id.
        id: u64,
    },
    /// The node's failure domain and weight (format 0 only: 1.11 answers twice otherwise).
    Describe,
    /// Set the node's weight.
    Weight {
        /// New weight.
        weight: u64,
    },
}

impl Request<'_> {
    /// The request's type code.
    pub fn kind(&self) -> u8 {
        match self {
            Request::Leader => t::LEADER,
            Request::Client { .. } => t::CLIENT,
            Request::Open { .. } => t::OPEN,
            Request::Prepare { .. } => t::PREPARE,
            Request::Exec { .. } => t::EXEC,
            Request::Query { .. } => t::QUERY,
            Request::Finalize { .. } => t::FINALIZE,
            Request::ExecSql { .. } => t::EXEC_SQL,
            Request::QuerySql { .. } => t::QUERY_SQL,
            Request::Interrupt { .. } => t::INTERRUPT,
            Request::Add { .. } => t::ADD,
            Request::Assign { .. } => t::ASSIGN,
            Request::Remove { .. } => t::REMOVE,
            Request::Dump { .. } => t::DUMP,
            Request::Cluster { .. } => t::CLUSTER,
            Request::Transfer { .. } => t::TRANSFER,
            Request::Describe => t::DESCRIBE,
            Request::Weight { .. } => t::WEIGHT,
        }
    }

    /// Encodes the full message (header and body).
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        frame(self.kind(), |w| self.encode_body(w))
    }

    fn encode_body(&self, w: &mut Writer) -> Result<(), ProtocolError> {
        match self {
            Request::Leader | Request::Describe => w.u64(0),
            Request::Client { id } | Request::Remove { id } | Request::Transfer { id } => w.u64(*id),
            Request::Open { name } => {
                w.text(name)?;
                w.u64(0);
                w.text("volatile")?;
            }
            Request::Prepare { db, sql } => {
                w.u64(u64::from(*db));
                w.text(sql)?;
            }
            Request::Exec { db, stmt, params } | Request::Query { db, stmt, params } => {
                w.u32(*db);
                w.u32(*stmt);
                encode_params(params, w)?;
            }
            Request::Finalize { db, stmt } => {
                w.u32(*db);
                w.u32(*stmt);
            }
            Request::ExecSql { db, sql, params } | Request::QuerySql { db, sql, params } => {
                w.u64(u64::from(*db));
                w.text(sql)?;
                encode_params(params, w)?;
            }
            Request::Interrupt { db } => w.u64(u64::from(*db)),
            Request::Add { id, address } => {
                w.u64(*id);
                w.text(address)?;
            }
            Request::Assign { id, role } => {
                w.u64(*id);
                w.u64(role.code());
            }
            Request::Dump { name } => w.text(name)?,
            Request::Cluster { format } => w.u64(*format),
            Request::Weight { weight } => w.u64(*weight),
        }
        Ok(())
    }

    /// Decodes a request body of type `kind` (what a server does; used by tests and fuzzing).
    pub fn decode(kind: u8, body: &[u8]) -> Result<Request<'static>, ProtocolError> {
        let mut r = Reader::new(body);
        let owned = |s: &str| Cow::Owned(s.to_owned());
        let db32 = |v: u64| u32::try_from(v).map_err(|_| ProtocolError::InvalidField { field: "db_id", value: v });
        let req = match kind {
            t::LEADER => {
                r.u64()?;
                Request::Leader
            }
            t::CLIENT => Request::Client { id: r.u64()? },
            t::OPEN => {
                let name = owned(r.text()?);
                r.u64()?;
                r.text()?;
                Request::Open { name }
            }
            t::PREPARE => Request::Prepare { db: db32(r.u64()?)?, sql: owned(r.text()?) },
            t::EXEC | t::QUERY => {
                let (db, stmt) = (r.u32()?, r.u32()?);
                let params = Cow::Owned(decode_params(&mut r)?);
                if kind == t::EXEC { Request::Exec { db, stmt, params } } else { Request::Query { db, stmt, params } }
            }
            t::FINALIZE => Request::Finalize { db: r.u32()?, stmt: r.u32()? },
            t::EXEC_SQL | t::QUERY_SQL => {
                let db = db32(r.u64()?)?;
                let sql = owned(r.text()?);
                let params = Cow::Owned(decode_params(&mut r)?);
                if kind == t::EXEC_SQL {
                    Request::ExecSql { db, sql, params }
                } else {
                    Request::QuerySql { db, sql, params }
                }
            }
            t::INTERRUPT => Request::Interrupt { db: db32(r.u64()?)? },
            t::ADD => Request::Add { id: r.u64()?, address: owned(r.text()?) },
            t::ASSIGN => {
                let id = r.u64()?;
                // Without a role this is the legacy PROMOTE, which means voter.
                let role = if r.is_empty() { Role::Voter } else { Role::from_code(r.u64()?)? };
                Request::Assign { id, role }
            }
            t::REMOVE => Request::Remove { id: r.u64()? },
            t::DUMP => Request::Dump { name: owned(r.text()?) },
            t::CLUSTER => Request::Cluster { format: r.u64()? },
            t::TRANSFER => Request::Transfer { id: r.u64()? },
            t::DESCRIBE => match r.u64()? {
                0 => Request::Describe,
                value => {
                    return Err(ProtocolError::InvalidField { field: "describe format", value });
                }
            },
            t::WEIGHT => Request::Weight { weight: r.u64()? },
            kind => return Err(ProtocolError::UnknownMessageType { kind }),
        };
        if !r.is_empty() {
            return Err(ProtocolError::TrailingBytes { kind: "request", extra: r.remaining() });
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{HEADER_SIZE, Header};

    pub(crate) fn every_request() -> Vec<Request<'static>> {
        let params: Cow<'static, [Value]> = Cow::Owned(vec![
            Value::Integer(1),
            Value::Text("two".into()),
            Value::Blob(vec![3; 9]),
            Value::Null,
            Value::Float(0.5),
            Value::Boolean(false),
            Value::Iso8601("2020-01-01".into()),
        ]);
        vec![
            Request::Leader,
            Request::Client { id: 7 },
            Request::Open { name: "db".into() },
            Request::Prepare { db: 0, sql: "SELECT ?".into() },
            Request::Exec { db: 0, stmt: 3, params: params.clone() },
            Request::Exec { db: 0, stmt: 3, params: Cow::Owned(vec![]) },
            Request::Query { db: 0, stmt: 4, params: params.clone() },
            Request::Finalize { db: 0, stmt: 4 },
            Request::ExecSql { db: 0, sql: "INSERT INTO t VALUES(?)".into(), params: params.clone() },
            Request::QuerySql { db: 0, sql: "SELECT 1".into(), params: Cow::Owned(vec![]) },
            Request::Interrupt { db: 0 },
            Request::Add { id: 9, address: "127.0.0.1:9001".into() },
            Request::Assign { id: 9, role: Role::StandBy },
            Request::Remove { id: 9 },
            Request::Dump { name: "db".into() },
            Request::Cluster { format: 1 },
            Request::Transfer { id: 0 },
            Request::Describe,
            Request::Weight { weight: 5 },
        ]
    }

    #[test]
    fn every_request_round_trips() {
        for req in every_request() {
            let bytes = req.encode().unwrap();
            let header = Header::decode(bytes[..HEADER_SIZE].try_into().unwrap());
            assert_eq!(header.kind, req.kind());
            assert_eq!(header.body_len() as usize, bytes.len() - HEADER_SIZE);
            let back = Request::decode(header.kind, &bytes[HEADER_SIZE..]).unwrap();
            assert_eq!(back, req, "{req:?}");
        }
    }

    #[test]
    fn hazardous_request_types_cannot_be_encoded() {
        // HEARTBEAT (2) stalls a 1.11 connection, CONNECT (11) hands it to raft, and unknown
        // types get no reply: none of them can come out of the encoder.
        for req in every_request() {
            assert!(![2u8, 11].contains(&req.kind()) && req.kind() <= 19, "{req:?}");
        }
        assert!(matches!(Request::decode(2, &[0; 8]), Err(ProtocolError::UnknownMessageType { kind: 2 })));
        assert!(matches!(Request::decode(11, &[0; 8]), Err(ProtocolError::UnknownMessageType { .. })));
    }

    #[test]
    fn known_encodings() {
        // OPEN: "db\0" padded, flags 0, "volatile\0" padded to 16.
        let open = Request::Open { name: "db".into() }.encode().unwrap();
        assert_eq!(&open[..8], &[4, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(&open[8..16], b"db\0\0\0\0\0\0");
        assert_eq!(&open[24..33], b"volatile\0");
        // ASSIGN carries the role word after the id.
        let assign = Request::Assign { id: 1, role: Role::Spare }.encode().unwrap();
        assert_eq!(assign[16], 2);
        // Legacy PROMOTE (no role) decodes as voter.
        assert_eq!(
            Request::decode(t::ASSIGN, &1u64.to_le_bytes()).unwrap(),
            Request::Assign { id: 1, role: Role::Voter }
        );
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for req in every_request() {
            let bytes = req.encode().unwrap();
            let body = &bytes[HEADER_SIZE..];
            for cut in 0..body.len() {
                // Every strict prefix is either an error or (for optional params) a shorter request.
                if let Ok(short) = Request::decode(req.kind(), &body[..cut]) {
                    assert_ne!(short, req);
                }
            }
        }
        assert!(Request::decode(t::LEADER, &[0; 16]).is_err());
        assert!(Request::decode(t::DESCRIBE, &1u64.to_le_bytes()).is_err());
        assert!(Request::decode(t::ASSIGN, &[1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn nul_in_sql_is_refused() {
        let err = Request::ExecSql { db: 0, sql: "SELECT 1\0; DROP TABLE t".into(), params: Cow::Owned(vec![]) }
            .encode()
            .unwrap_err();
        assert_eq!(err, ProtocolError::NulInText);
    }
}
