//! One client connection to one dqlite node: the handshake, strictly alternating request and
//! response frames, and the bookkeeping that keeps libdqlite 1.11 from misbehaving.
//!
//! libdqlite 1.11 reads a connection's next request only once it has written the whole answer
//! to the one before (all rows of a streaming query included), so answers come strictly in
//! order and one lost frame loses the framing for good. A [`Connection`] tracks its state: a
//! request whose exchange was cut short (a timeout, a dropped future) leaves the connection
//! unusable, and rows left unread are drained before the next request goes out. Only
//! [`Connection::exec_sql_behind_barrier`] writes two requests at once; the server queues the
//! second behind the first's answer, and both answers are read before anything else.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::error::{Error, Result, excerpt};
use crate::proto::{
    File, HEADER_SIZE, Header, NodeInfo, PROTOCOL_VERSION, ProtocolError, Request, Response, Role, RowsEnd, Value,
};
use crate::rows::Rows;
use crate::sql_text;

/// A byte stream a connection can run over: TCP, a unix socket, TLS, an upgraded HTTP stream.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// Default deadline for one request/response exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default largest message accepted from a node (a DUMP carries the whole database).
pub const DEFAULT_MAX_MESSAGE: u64 = 256 * 1024 * 1024;

/// A statement that reads and writes nothing, and whose step ends at once (no row): what
/// [`Connection::exec_sql_behind_barrier`] sends in front of its text.
pub(crate) const BARRIER_SQL: &str = "SELECT 1 WHERE 0";

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Ready for a request.
    Idle,
    /// An exchange is under way; finding this state at the start of a new one means the last
    /// exchange was abandoned mid-frame.
    Busy,
    /// A query's rows are still arriving.
    Streaming,
    /// Unusable.
    Broken,
}

/// Outcome of EXEC / EXEC_SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExecResult {
    /// Rowid of the last inserted row.
    pub last_insert_id: u64,
    /// Rows changed by the last statement.
    pub rows_affected: u64,
}

/// A statement prepared on a particular connection.
#[derive(Debug)]
pub struct Statement {
    conn: u64,
    id: u32,
    params: u64,
    read_only: bool,
    sql: String,
}

impl Statement {
    /// Number of parameters the statement takes; every execution must pass exactly these.
    pub fn param_count(&self) -> u64 {
        self.params
    }

    /// Whether the statement was classified read-only (and so may be queried).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
}

/// A connection to one dqlite node.
pub struct Connection {
    io: BufReader<BoxStream>,
    address: String,
    pub(crate) state: State,
    db: Option<u32>,
    id: u64,
    timeout: Duration,
    max_message: u64,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.address)
            .field("state", &self.state)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Performs the protocol handshake over an already connected stream. `address` is the
    /// node's address, used in errors and leader checks.
    pub async fn handshake(stream: impl Stream, address: impl Into<String>) -> Result<Connection> {
        let mut conn = Connection {
            io: BufReader::new(Box::new(stream)),
            address: address.into(),
            state: State::Busy,
            db: None,
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            timeout: DEFAULT_TIMEOUT,
            max_message: DEFAULT_MAX_MESSAGE,
            buf: Vec::new(),
        };
        let version = PROTOCOL_VERSION.to_le_bytes();
        let outcome = tokio::time::timeout(conn.timeout, conn.write(&version)).await;
        conn.finish("handshake with", outcome)?;
        conn.state = State::Idle;
        Ok(conn)
    }

    /// The node's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// False once an exchange failed in a way that lost the framing; open a new connection.
    pub fn is_usable(&self) -> bool {
        self.state != State::Broken && self.state != State::Busy
    }

    /// Whether the peer closed the connection (or sent bytes nobody asked for) while it sat
    /// idle. Checked without blocking before reusing a pooled connection: a request written to
    /// a dead peer could otherwise not be told apart from one that was lost mid-way.
    pub fn peer_closed(&mut self) -> bool {
        use std::task::{Context, Poll, Waker};
        use tokio::io::AsyncBufRead;
        if self.state != State::Idle {
            return !self.is_usable();
        }
        let mut cx = Context::from_waker(Waker::noop());
        match std::pin::Pin::new(&mut self.io).poll_fill_buf(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(_) => {
                self.state = State::Broken;
                true
            }
        }
    }

    /// Sets the deadline for each request/response exchange (and each batch of rows).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sets the largest message accepted from the node; larger ones close the connection.
    pub fn set_max_message_size(&mut self, bytes: u64) {
        self.max_message = bytes;
    }

    /// Asks the node who the leader is. `None` when it does not know (only voters know).
    pub async fn leader(&mut self) -> Result<Option<NodeInfo>> {
        match self.roundtrip(&Request::Leader, 0).await? {
            Response::Server { id, address } if id != 0 && !address.is_empty() => {
                Ok(Some(NodeInfo { id, address, role: None }))
            }
            Response::Server { .. } => Ok(None),
            other => Err(self.unexpected("LEADER", &other)),
        }
    }

    /// Registers the client; returns the heartbeat timeout the node announces (in ms).
    pub async fn client(&mut self, id: u64) -> Result<u64> {
        match self.roundtrip(&Request::Client { id }, 0).await? {
            Response::Welcome { heartbeat_timeout } => Ok(heartbeat_timeout),
            other => Err(self.unexpected("CLIENT", &other)),
        }
    }

    /// Opens database `name` on this connection (at most one per connection).
    pub async fn open(&mut self, name: &str) -> Result<()> {
        match self.roundtrip(&Request::Open { name: name.into() }, 0).await? {
            Response::Db { id } => {
                self.db = Some(id);
                Ok(())
            }
            other => Err(self.unexpected("OPEN", &other)),
        }
    }

    /// Prepares a single statement. Text with several statements is refused: the server would
    /// silently drop all but the first.
    pub async fn prepare(&mut self, sql_text: &str) -> Result<Statement> {
        let single = single_statement("prepare", sql_text)?;
        refuse_returning(single)?;
        let db = self.db()?;
        match self.roundtrip(&Request::Prepare { db, sql: sql_text.into() }, 0).await? {
            Response::Stmt { id, params, .. } => Ok(Statement {
                conn: self.id,
                id,
                params,
                read_only: sql_text::is_read_only(single),
                sql: excerpt(single),
            }),
            other => Err(self.unexpected("PREPARE", &other)),
        }
    }

    /// Executes a prepared statement with all of its parameters.
    pub async fn exec(&mut self, stmt: &Statement, params: &[Value]) -> Result<ExecResult> {
        let db = self.check_statement(stmt, params)?;
        let req = Request::Exec { db, stmt: stmt.id, params: Cow::Borrowed(params) };
        let resp = self.roundtrip(&req, 0).await?;
        self.exec_result("EXEC", resp)
    }

    /// Runs a prepared read-only statement and streams its rows.
    pub async fn query(&mut self, stmt: &Statement, params: &[Value]) -> Result<Rows<'_>> {
        let db = self.check_statement(stmt, params)?;
        if !stmt.read_only {
            return Err(Error::NotReadOnly { sql: stmt.sql.clone() });
        }
        let req = Request::Query { db, stmt: stmt.id, params: Cow::Borrowed(params) };
        self.start_rows("QUERY", &req).await
    }

    /// Releases a prepared statement.
    pub async fn finalize(&mut self, stmt: Statement) -> Result<()> {
        let db = self.statement_db(&stmt)?;
        let resp = self.roundtrip(&Request::Finalize { db, stmt: stmt.id }, 0).await?;
        self.empty("FINALIZE", resp)
    }

    /// Executes SQL text, which may hold several statements; each runs (and is replicated) on
    /// its own unless the text has its own BEGIN/COMMIT. Parameters bind to the first statement.
    pub async fn exec_sql(&mut self, sql_text: &str, params: &[Value]) -> Result<ExecResult> {
        let req = self.exec_sql_request(sql_text, params)?;
        let resp = self.roundtrip(&req, 0).await?;
        self.exec_result("EXEC_SQL", resp)
    }

    /// The EXEC_SQL request for `sql_text`, once the text and its parameters passed the checks
    /// libdqlite 1.11 needs (no `RETURNING`, an open database, parameters it can bind).
    fn exec_sql_request<'a>(&self, sql_text: &'a str, params: &'a [Value]) -> Result<Request<'a>> {
        refuse_returning(sql_text)?;
        let db = self.db()?;
        check_params(params)?;
        Ok(Request::ExecSql { db, sql: sql_text.into(), params: Cow::Borrowed(params) })
    }

    /// [`Connection::exec_sql`] for text of several statements outside a transaction's writes,
    /// sent in one write right behind a request that does nothing (`SELECT 1 WHERE 0`), whose
    /// answer is read and dropped.
    ///
    /// Why: libdqlite 1.11 makes every statement wait for a raft barrier while the log holds an
    /// entry not yet applied (as it does for a round after each leader checkpoint), and
    /// libraft 0.15 runs a barrier's callback before it counts the barrier as applied. So in
    /// one EXEC_SQL every statement after the first finds the log behind again and takes a
    /// barrier of its own: one replication round per statement, tens of milliseconds for a
    /// batch of writes. The request in front takes the one barrier; the server reads the text
    /// only after raft's apply loop is done, so its statements need none.
    pub async fn exec_sql_behind_barrier(&mut self, sql_text: &str, params: &[Value]) -> Result<ExecResult> {
        let req = self.exec_sql_request(sql_text, params)?;
        let mut frame = self.exec_sql_request(BARRIER_SQL, &[])?.encode().map_err(Error::Encode)?;
        frame.extend(req.encode().map_err(Error::Encode)?);
        self.settle().await?;
        self.state = State::Busy;
        let timeout = self.timeout;
        let exchange = async {
            self.write(&frame).await?;
            let first = self.read_response(0).await?;
            Ok((first, self.read_response(0).await?))
        };
        let outcome = tokio::time::timeout(timeout, exchange).await;
        let (first, second) = self.finish("request to", outcome)?;
        self.state = State::Idle;
        if !matches!(first, Response::Result { .. } | Response::Failure { .. }) {
            return Err(self.unexpected("EXEC_SQL", &first));
        }
        // Whatever made the request in front fail (no leader, the barrier) fails the text too,
        // which says so itself.
        match second {
            Response::Failure { code, message } => Err(Error::server(code, message)),
            other => self.exec_result("EXEC_SQL", other),
        }
    }

    /// Runs one read-only statement and streams its rows. A statement that may write is refused
    /// before anything is sent: libdqlite 1.11 would run it without replicating it.
    pub async fn query_sql(&mut self, sql_text: &str, params: &[Value]) -> Result<Rows<'_>> {
        let single = single_statement("query", sql_text)?;
        refuse_returning(single)?;
        if !sql_text::is_read_only(single) {
            return Err(Error::NotReadOnly { sql: excerpt(single) });
        }
        let db = self.db()?;
        check_params(params)?;
        let req = Request::QuerySql { db, sql: sql_text.into(), params: Cow::Borrowed(params) };
        self.start_rows("QUERY_SQL", &req).await
    }

    /// Adds a node to the configuration as a spare (leader only).
    pub async fn add(&mut self, id: u64, address: &str) -> Result<()> {
        let resp = self.roundtrip(&Request::Add { id, address: address.into() }, 0).await?;
        self.empty("ADD", resp)
    }

    /// Changes a node's role (leader only).
    pub async fn assign(&mut self, id: u64, role: Role) -> Result<()> {
        let resp = self.roundtrip(&Request::Assign { id, role }, 0).await?;
        self.empty("ASSIGN", resp)
    }

    /// Removes a node from the configuration (leader only).
    pub async fn remove(&mut self, id: u64) -> Result<()> {
        let resp = self.roundtrip(&Request::Remove { id }, 0).await?;
        self.empty("REMOVE", resp)
    }

    /// Hands leadership to voter `id`, or to a voter raft picks when `id` is 0 (leader only).
    pub async fn transfer(&mut self, id: u64) -> Result<()> {
        let resp = self.roundtrip(&Request::Transfer { id }, 0).await?;
        self.empty("TRANSFER", resp)
    }

    /// This node's view of the raft configuration, with roles.
    pub async fn cluster(&mut self) -> Result<Vec<NodeInfo>> {
        self.cluster_with_format(1).await
    }

    /// This node's view of the raft configuration in CLUSTER format 0 (ids and addresses, as
    /// pre-1.0 servers answer) or 1 (with roles).
    pub async fn cluster_with_format(&mut self, format: u64) -> Result<Vec<NodeInfo>> {
        if format > 1 {
            return Err(Error::Encode(ProtocolError::InvalidField { field: "cluster format", value: format }));
        }
        match self.roundtrip(&Request::Cluster { format }, format).await? {
            Response::Servers(nodes) => Ok(nodes),
            other => Err(self.unexpected("CLUSTER", &other)),
        }
    }

    /// This node's failure domain and weight.
    pub async fn describe(&mut self) -> Result<(u64, u64)> {
        match self.roundtrip(&Request::Describe, 0).await? {
            Response::Metadata { failure_domain, weight } => Ok((failure_domain, weight)),
            other => Err(self.unexpected("DESCRIBE", &other)),
        }
    }

    /// Sets this node's weight (used when choosing nodes for roles).
    pub async fn weight(&mut self, weight: u64) -> Result<()> {
        let resp = self.roundtrip(&Request::Weight { weight }, 0).await?;
        self.empty("WEIGHT", resp)
    }

    /// This node's copy of database `name`: the main file and its WAL.
    pub async fn dump(&mut self, name: &str) -> Result<Vec<File>> {
        match self.roundtrip(&Request::Dump { name: name.into() }, 0).await? {
            Response::Files(files) => Ok(files),
            other => Err(self.unexpected("DUMP", &other)),
        }
    }

    fn db(&self) -> Result<u32> {
        self.db.ok_or(Error::NoDatabase)
    }

    /// The database id for a statement prepared on this connection.
    fn statement_db(&self, stmt: &Statement) -> Result<u32> {
        if stmt.conn != self.id {
            return Err(Error::ForeignStatement { id: stmt.id });
        }
        self.db()
    }

    fn check_statement(&self, stmt: &Statement, params: &[Value]) -> Result<u32> {
        // libdqlite resets but never clears bindings, so a short parameter list would silently
        // reuse values from the previous execution.
        if params.len() as u64 != stmt.params {
            return Err(Error::ParamCount { expected: stmt.params, given: params.len() });
        }
        check_params(params)?;
        self.statement_db(stmt)
    }

    fn exec_result(&mut self, request: &'static str, resp: Response) -> Result<ExecResult> {
        match resp {
            Response::Result { last_insert_id, rows_affected } => Ok(ExecResult { last_insert_id, rows_affected }),
            other => Err(self.unexpected(request, &other)),
        }
    }

    fn empty(&mut self, request: &'static str, resp: Response) -> Result<()> {
        match resp {
            Response::Empty => Ok(()),
            other => Err(self.unexpected(request, &other)),
        }
    }

    fn unexpected(&mut self, request: &'static str, got: &Response) -> Error {
        self.state = State::Broken;
        Error::UnexpectedResponse { request, got: got.name(), address: self.address.clone() }
    }

    async fn start_rows(&mut self, request: &'static str, req: &Request<'_>) -> Result<Rows<'_>> {
        match self.roundtrip(req, 0).await? {
            Response::Rows(batch) => {
                if batch.end == RowsEnd::Part {
                    self.state = State::Streaming;
                }
                Ok(Rows::new(self, batch))
            }
            other => Err(self.unexpected(request, &other)),
        }
    }

    /// Sends one request and reads its (first) response. A FAILURE becomes `Error::Server`
    /// and leaves the connection usable.
    pub(crate) async fn roundtrip(&mut self, req: &Request<'_>, cluster_format: u64) -> Result<Response> {
        self.settle().await?;
        let frame = req.encode().map_err(Error::Encode)?;
        self.state = State::Busy;
        let outcome = tokio::time::timeout(self.timeout, self.exchange(&frame, cluster_format)).await;
        let resp = self.finish("request to", outcome)?;
        self.state = State::Idle;
        match resp {
            Response::Failure { code, message } => Err(Error::server(code, message)),
            other => Ok(other),
        }
    }

    /// Brings the connection back to Idle: drains rows a dropped [`Rows`] left unread, and
    /// refuses to go on after an exchange that was cut short.
    async fn settle(&mut self) -> Result<()> {
        loop {
            match self.state {
                State::Idle => return Ok(()),
                State::Busy | State::Broken => {
                    self.state = State::Broken;
                    return Err(Error::Broken { address: self.address.clone() });
                }
                State::Streaming => {
                    self.next_batch().await?;
                }
            }
        }
    }

    /// Reads the next ROWS message of a streaming query. Leaves the state Idle after the last
    /// one (or a FAILURE), Streaming otherwise.
    pub(crate) async fn next_batch(&mut self) -> Result<Option<crate::proto::RowsBatch>> {
        if self.state != State::Streaming {
            return Ok(None);
        }
        self.state = State::Busy;
        let outcome = tokio::time::timeout(self.timeout, self.read_response(0)).await;
        let resp = self.finish("reading rows from", outcome)?;
        match resp {
            Response::Rows(batch) => {
                self.state = if batch.end == RowsEnd::Part { State::Streaming } else { State::Idle };
                Ok(Some(batch))
            }
            Response::Failure { code, message } => {
                self.state = State::Idle;
                Err(Error::server(code, message))
            }
            other => Err(self.unexpected("QUERY", &other)),
        }
    }

    /// Sends INTERRUPT for a streaming query and reads until its EMPTY answer. libdqlite 1.11
    /// reads the request only after streaming every remaining batch, so those are discarded.
    pub(crate) async fn interrupt(&mut self) -> Result<()> {
        if self.state != State::Streaming {
            return self.settle().await;
        }
        let db = self.db()?;
        let frame = Request::Interrupt { db }.encode().map_err(Error::Encode)?;
        self.state = State::Busy;
        let outcome = tokio::time::timeout(self.timeout, self.interrupt_exchange(&frame)).await;
        self.finish("interrupting a query on", outcome)?;
        self.state = State::Idle;
        Ok(())
    }

    async fn interrupt_exchange(&mut self, frame: &[u8]) -> Result<()> {
        self.write(frame).await?;
        // The query ends first (its last ROWS, or a FAILURE if it failed meanwhile, e.g. at
        // the statement time limit); only then does the server read the INTERRUPT and answer
        // it with EMPTY.
        loop {
            match self.read_response(0).await? {
                Response::Rows(_) | Response::Failure { .. } => continue,
                Response::Empty => return Ok(()),
                other => return Err(self.unexpected("INTERRUPT", &other)),
            }
        }
    }

    async fn exchange(&mut self, frame: &[u8], cluster_format: u64) -> Result<Response> {
        self.write(frame).await?;
        self.read_response(cluster_format).await
    }

    /// Turns the outcome of a deadline-bound exchange into a result; anything but a FAILURE
    /// message leaves the connection Broken, since its framing is lost.
    fn finish<T>(&mut self, op: &'static str, outcome: Result<Result<T>, tokio::time::error::Elapsed>) -> Result<T> {
        let result =
            outcome.unwrap_or_else(|_| Err(Error::Timeout { op, address: self.address.clone(), after: self.timeout }));
        if let Err(err) = &result
            && err.is_connection_lost()
        {
            self.state = State::Broken;
        }
        result
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let io = self.io.get_mut();
        let result = async {
            io.write_all(bytes).await?;
            io.flush().await
        }
        .await;
        result.map_err(|source| Error::Io { op: "writing to", address: self.address.clone(), source })
    }

    async fn read_response(&mut self, cluster_format: u64) -> Result<Response> {
        let io_err = |address: &str, source| Error::Io { op: "reading from", address: address.to_owned(), source };
        let mut header = [0u8; HEADER_SIZE];
        self.io.read_exact(&mut header).await.map_err(|e| io_err(&self.address, e))?;
        let header = Header::decode(header);
        let len = header.body_len();
        if len > self.max_message {
            return Err(self.protocol(ProtocolError::FrameTooLarge { size: len, limit: self.max_message }));
        }
        // Grow with the bytes that actually arrive, so a lying header costs nothing up front.
        self.buf.clear();
        self.buf.reserve(len.min(64 * 1024) as usize);
        let read = (&mut self.io).take(len).read_to_end(&mut self.buf).await.map_err(|e| io_err(&self.address, e))?;
        if (read as u64) < len {
            return Err(io_err(&self.address, std::io::ErrorKind::UnexpectedEof.into()));
        }
        let response = Response::decode(header.kind, &self.buf, cluster_format).map_err(|e| self.protocol(e));
        if self.buf.capacity() > 1024 * 1024 {
            self.buf = Vec::new();
        }
        response
    }

    fn protocol(&self, source: ProtocolError) -> Error {
        Error::Protocol { address: self.address.clone(), source }
    }
}

fn single_statement<'s>(op: &'static str, sql_text: &'s str) -> Result<&'s str> {
    let statements = sql_text::split_statements(sql_text);
    match statements.as_slice() {
        [] => Err(Error::EmptyStatement),
        [one] => Ok(one),
        many => Err(Error::MultipleStatements { op, count: many.len(), sql: excerpt(sql_text) }),
    }
}

fn refuse_returning(sql_text: &str) -> Result<()> {
    if sql_text::has_returning(sql_text) {
        return Err(Error::Returning { sql: excerpt(sql_text) });
    }
    Ok(())
}

fn check_params(params: &[Value]) -> Result<()> {
    match params.iter().position(|p| matches!(p, Value::UnixTime(_))) {
        Some(index) => Err(Error::UnsupportedParam { index }),
        None => Ok(()),
    }
}
