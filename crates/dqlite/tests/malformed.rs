//! A fake server that misbehaves: the client must answer every malformed, truncated, oversized
//! or unexpected frame with a typed error, never panic, and never reuse the broken connection.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use dqlite::proto::{Header, Response, response_type};
use dqlite::{Connection, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A connection whose server side is `server`, after reading the client's handshake.
async fn pair() -> (Connection, DuplexStream) {
    let (client, mut server) = tokio::io::duplex(1 << 16);
    let (conn, _) = tokio::join!(Connection::handshake(client, "fake"), async {
        let mut version = [0u8; 8];
        server.read_exact(&mut version).await.unwrap();
        assert_eq!(u64::from_le_bytes(version), 1);
    });
    let mut conn = conn.unwrap();
    conn.set_timeout(Duration::from_millis(300));
    (conn, server)
}

/// Reads one request from the client and answers with `reply`.
async fn answer(server: &mut DuplexStream, reply: &[u8]) {
    let mut header = [0u8; 8];
    server.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; Header::decode(header).body_len() as usize];
    server.read_exact(&mut body).await.unwrap();
    server.write_all(reply).await.unwrap();
}

fn raw(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Header { words: (body.len() / 8) as u32, kind, flags: 0, extra: 0 }.encode().to_vec();
    out.extend_from_slice(body);
    out
}

async fn leader_with_reply(reply: Vec<u8>) -> (Result<Option<dqlite::NodeInfo>, Error>, Connection) {
    let (mut conn, mut server) = pair().await;
    // The server hangs up right after its reply, as a crashing node would.
    let (result, _) = tokio::join!(conn.leader(), async move { answer(&mut server, &reply).await });
    (result, conn)
}

#[tokio::test]
async fn oversized_frames_are_refused_without_allocating() {
    let (mut conn, mut server) = pair().await;
    conn.set_max_message_size(1024);
    let huge = Header { words: u32::MAX, kind: response_type::SERVER, flags: 0, extra: 0 }.encode();
    let (result, _) = tokio::join!(conn.leader(), answer(&mut server, &huge));
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    assert!(!conn.is_usable());
    assert!(matches!(conn.leader().await, Err(Error::Broken { .. })));
}

#[tokio::test]
async fn truncated_frames_are_io_errors() {
    // The header announces 4 words, only 1 arrives before the server hangs up.
    let mut reply = Header { words: 4, kind: response_type::SERVER, flags: 0, extra: 0 }.encode().to_vec();
    reply.extend_from_slice(&[0; 8]);
    let (result, conn) = leader_with_reply(reply).await;
    assert!(matches!(result, Err(Error::Io { .. })), "{result:?}");
    assert!(!conn.is_usable());
}

#[tokio::test]
async fn garbage_bodies_are_protocol_errors() {
    let cases: Vec<Vec<u8>> = vec![
        raw(response_type::SERVER, &[1, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', 0, 0, 0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9]),
        raw(response_type::SERVER, &[1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, 0, 0, 0, 0, 0, 0]),
        raw(response_type::SERVER, &[1, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h']),
        raw(99, &[0; 8]),
    ];
    for reply in cases {
        let (result, conn) = leader_with_reply(reply.clone()).await;
        assert!(matches!(result, Err(Error::Protocol { .. })), "{reply:?}: {result:?}");
        assert!(!conn.is_usable());
    }
}

#[tokio::test]
async fn a_response_of_the_wrong_type_breaks_the_connection() {
    let (result, conn) = leader_with_reply(Response::Empty.encode().unwrap()).await;
    assert!(matches!(result, Err(Error::UnexpectedResponse { request: "LEADER", got: "EMPTY", .. })), "{result:?}");
    assert!(!conn.is_usable());
}

#[tokio::test]
async fn a_failure_keeps_the_connection_usable() {
    let (mut conn, mut server) = pair().await;
    let failure = Response::Failure { code: 1, message: "nope".into() }.encode().unwrap();
    let (result, _) = tokio::join!(conn.leader(), answer(&mut server, &failure));
    assert_eq!(result.unwrap_err().code(), Some(1));
    assert!(conn.is_usable());
    let ok = Response::Server { id: 3, address: "fake".into() }.encode().unwrap();
    let (result, _) = tokio::join!(conn.leader(), answer(&mut server, &ok));
    assert_eq!(result.unwrap().unwrap().id, 3);
}

#[tokio::test]
async fn a_silent_server_times_out_and_the_connection_is_dropped() {
    let (mut conn, _server) = pair().await;
    let err = conn.leader().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.is_ambiguous());
    assert!(matches!(conn.leader().await, Err(Error::Broken { .. })));
}

#[tokio::test]
async fn a_peer_that_hung_up_is_noticed_before_sending() {
    let (mut conn, server) = pair().await;
    assert!(!conn.peer_closed());
    drop(server);
    tokio::task::yield_now().await;
    assert!(conn.peer_closed());
    assert!(!conn.is_usable());
}

#[tokio::test]
async fn unsolicited_bytes_break_the_connection() {
    let (mut conn, mut server) = pair().await;
    server.write_all(&Response::Empty.encode().unwrap()).await.unwrap();
    tokio::task::yield_now().await;
    assert!(conn.peer_closed());
}
