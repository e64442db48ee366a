//! What each fuzz target (`fuzz/`, `make fuzz`) does with its input, shared with the test that
//! replays the committed inputs (`fuzz/regressions/`) under `cargo test`. Every function must
//! return for any input without panicking, and without allocating more than the input (or a
//! fixed limit) justifies; the properties checked inside panic when they fail.

use std::time::Duration;

use dqlite::proto::{Request, Response};
use microcluster::api::{
    ClusterMemberLocal, Control, HeartbeatRequest, JoinRequest, JoinToken, MemberConfig, NewMemberHookRequest,
    RemoveHookRequest, SqlQuery, TokenRequest, TransferLeaderRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A fuzz target: takes any bytes.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("dqlite_message", dqlite_message),
    ("dqlite_stream", dqlite_stream),
    ("join_token", join_token),
    ("sql_statements", sql_statements),
    ("rest_body", rest_body),
];

/// One message body of any type: byte 0 is the type, byte 1 the CLUSTER format, the rest the
/// body. What decodes must encode to a message that decodes and encodes to the same bytes
/// (bytes, not values, are compared: a NaN is not equal to itself).
pub fn dqlite_message(data: &[u8]) {
    let [kind, format, body @ ..] = data else { return };
    let format = u64::from(*format % 3);
    if let Ok(frame) = Response::decode(*kind, body, format).and_then(|r| r.encode()) {
        let again = Response::decode(*kind, frame.get(8..).unwrap_or_default(), format).and_then(|r| r.encode());
        assert_eq!(again.as_ref(), Ok(&frame), "response does not round-trip");
    }
    if let Ok(frame) = Request::decode(*kind, body).and_then(|r| r.encode()) {
        let again = Request::decode(*kind, frame.get(8..).unwrap_or_default()).and_then(|r| r.encode());
        assert_eq!(again.as_ref(), Ok(&frame), "request does not round-trip");
    }
}

/// A server that answers an OPEN properly and then sends `data` as its answer to a query: the
/// client must end with rows or an error, within its limits, whatever the bytes.
pub fn dqlite_stream(data: &[u8]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build() else {
        return;
    };
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let mut reply = Response::Db { id: 0 }.encode().unwrap_or_default();
        reply.extend_from_slice(data);
        let server = tokio::spawn(async move {
            let _ = server.write_all(&reply).await;
            // Read whatever the client sends until it hangs up.
            let mut sink = [0u8; 4096];
            while matches!(server.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        if let Ok(mut conn) = dqlite::Connection::handshake(client, "fuzz").await {
            conn.set_timeout(Duration::from_secs(1));
            conn.set_max_message_size(1 << 20);
            if conn.open("db").await.is_ok()
                && let Ok(rows) = conn.query_sql("SELECT 1", &[]).await
            {
                let _ = rows.collect_limited(dqlite::Limits { rows: 10_000, bytes: 1 << 20 }).await;
            }
        }
        server.abort();
    });
}

/// A join token as someone might paste it.
pub fn join_token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(token) = JoinToken::decode(text) {
        assert_eq!(JoinToken::decode(&token.encode()).as_ref(), Ok(&token), "token does not round-trip");
    }
}

/// SQL text: splitting keeps every statement inside the input, in order, and classification
/// and the RETURNING check never fail.
pub fn sql_statements(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let range = text.as_bytes().as_ptr_range();
    let mut last = range.start;
    for statement in dqlite::sql_text::split_statements(text) {
        let inner = statement.as_bytes().as_ptr_range();
        assert!(inner.start >= last && inner.end <= range.end, "statement outside or out of order");
        last = inner.end;
        let _ = dqlite::sql_text::classify(statement);
        let _ = dqlite::sql_text::has_returning(statement);
    }
}

/// A request body for any endpoint: what parses must serialise and parse back unchanged; names
/// and addresses go through the validators.
pub fn rest_body(data: &[u8]) {
    round_trip::<Control>(data);
    round_trip::<TokenRequest>(data);
    round_trip::<SqlQuery>(data);
    round_trip::<JoinRequest>(data);
    round_trip::<HeartbeatRequest>(data);
    round_trip::<ClusterMemberLocal>(data);
    round_trip::<MemberConfig>(data);
    round_trip::<NewMemberHookRequest>(data);
    round_trip::<RemoveHookRequest>(data);
    round_trip::<TransferLeaderRequest>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = microcluster::validate::member_name(text);
        let _ = microcluster::validate::member_address(text);
    }
}

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(data) {
        let text = serde_json::to_vec(&value).unwrap_or_default();
        let again = serde_json::from_slice::<T>(&text).ok();
        assert_eq!(again.as_ref(), Some(&value), "{} does not round-trip", std::any::type_name::<T>());
    }
}
