//! The service's REST API, under `/1.0`, served on every member's cluster address (to members
//! and, for `GET`s, to anyone) and on its control socket (to operators on the machine):
//!
//! | route | what |
//! |---|---|
//! | `GET /1.0/notes` | the notes' names |
//! | `GET /1.0/notes/{name}` (also `/1.0/memos/{name}`, the old name) | a note |
//! | `PUT /1.0/notes/{name}` | writes a note (the body): `201 Created` with its location when new |
//! | `DELETE /1.0/notes/{name}` | deletes a note: operators only (the control socket) |
//! | `GET /1.0/watch[?after=ID]` | the changes after change `ID`, as server-sent events, for as long as the client listens |
//! | `GET /1.0/members-file[?target=NAME]` | this member's (or member NAME's) `members.conf` (see `hooks`), served from disk |
//! | `GET /1.0/fleet` | every other member's version, asked of them all at once |
//! | `GET /1.0/echo` with `Upgrade: echo` | the connection switches to an echo of what the client writes |
//! | `GET /1.0/about` | what this member knows of itself and its cluster: certificates' fingerprints, leader, dqlite nodes, listeners, extensions |
//! | `GET /1.0/discovery` | whether this member is initialised yet: on the pre-init address before init, on the member's address after |
//! | `GET /1.0/beacon` (its own listener) | the same, from the daemon's start on |

use std::time::Duration;

use microcluster::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Resources, Response, Trust};
use microcluster::{Server, State};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The API, part of the core's listeners (the cluster address and the control socket); the
/// discovery endpoint, served before init too; the beacon on `beacon`, a listener of its own.
pub(crate) fn servers(beacon: Option<String>) -> Vec<Server> {
    let early = || Action::new(discovery).allow_untrusted().allowed_before_init();
    let discovery =
        Server::core("discovery", vec![Resources::new("1.0", vec![Endpoint::new("discovery").get(early())])])
            .pre_init();
    let mut beacon_server =
        Server::listener("beacon", vec![Resources::new("1.0", vec![Endpoint::new("beacon").get(early())])]).pre_init();
    if let Some(address) = beacon {
        beacon_server = beacon_server.default_address(address);
    }
    vec![api(), discovery, beacon_server]
}

/// What a member tells a peer looking for members: whether it is part of a cluster yet.
async fn discovery(state: State, _req: Request) -> HandlerResult {
    let initialised = state.database_status() != microcluster::DbStatus::NotInitialized;
    Response::sync(serde_json::json!({"name": state.name(), "version": state.version(), "initialised": initialised}))
}

fn api() -> Server {
    let endpoints = vec![
        Endpoint::new("notes").get(Action::new(list).allow_untrusted()),
        Endpoint::new("notes/{name}")
            .alias("memos/{name}")
            .get(Action::new(read).allow_untrusted())
            .put(Action::new(write))
            .delete(Action::new(delete).access(operators_only)),
        Endpoint::new("watch").get(Action::new(watch)),
        Endpoint::new("members-file").get(Action::new(members_file).proxy_target()),
        Endpoint::new("fleet").get(Action::new(fleet)),
        Endpoint::new("echo").get(Action::new(echo)),
        Endpoint::new("about").get(Action::new(about)),
    ];
    Server::core("notes", vec![Resources::new("1.0", endpoints)]).serve_unix()
}

/// A note as the API shows it.
#[derive(Debug, Serialize)]
struct Note {
    name: String,
    body: String,
    written_by: String,
}

fn text(value: Option<&dqlite::Value>) -> String {
    value.and_then(|v| v.as_str()).unwrap_or_default().to_owned()
}

async fn list(state: State, _req: Request) -> HandlerResult {
    let rows = state.query("SELECT name FROM notes ORDER BY name", &[]).await?;
    let names: Vec<String> = rows.rows.iter().map(|row| text(row.get(0))).collect();
    Response::sync(names)
}

async fn read(state: State, req: Request) -> HandlerResult {
    let name = req.param("name")?;
    let rows = state.query("SELECT name, body, written_by FROM notes WHERE name = ?", &[name.into()]).await?;
    let row = rows.rows.first().ok_or_else(|| ApiError::not_found(format!("no note named {name:?}")))?;
    Response::sync(Note { name: text(row.get(0)), body: text(row.get(1)), written_by: text(row.get(2)) })
}

async fn write(state: State, req: Request) -> HandlerResult {
    let name = req.param("name")?.to_owned();
    let body = String::from_utf8(req.body.to_vec()).map_err(|_| ApiError::bad_request("a note is UTF-8 text"))?;
    let writer = state.name();
    let location = format!("/1.0/notes/{name}");
    // The note and its change in one transaction: a watcher never sees one without the other.
    let created = state
        .transaction(move |tx| {
            Box::pin(async move {
                let existing = tx.query("SELECT 1 FROM notes WHERE name = ?", &[name.as_str().into()]).await?;
                let created = existing.rows.is_empty();
                tx.exec(
                    "INSERT INTO notes (name, body, written_by) VALUES (?, ?, ?) \
                     ON CONFLICT (name) DO UPDATE SET body = excluded.body, written_by = excluded.written_by",
                    &[name.as_str().into(), body.into(), writer.into()],
                )
                .await?;
                let kind = if created { "created" } else { "updated" };
                tx.exec("INSERT INTO changes (name, kind) VALUES (?, ?)", &[name.into(), kind.into()]).await?;
                Ok(created)
            })
        })
        .await?;
    match created {
        true => Response::empty().with_status(201)?.with_header("location", &location),
        false => Ok(Response::empty()),
    }
}

/// Only from the control socket: an operator on the machine, never another member or a
/// client with a member's certificate.
fn operators_only(_state: &State, req: &Request) -> Result<(), ApiError> {
    match req.trust {
        Trust::Unix => Ok(()),
        _ => Err(ApiError::forbidden("deleting a note is for operators: use the member's control socket")),
    }
}

async fn delete(state: State, req: Request) -> HandlerResult {
    let name = req.param("name")?.to_owned();
    let deleted = state
        .transaction(move |tx| {
            Box::pin(async move {
                let gone = tx.exec("DELETE FROM notes WHERE name = ?", &[name.as_str().into()]).await?;
                if gone.rows_affected > 0 {
                    tx.exec("INSERT INTO changes (name, kind) VALUES (?, 'deleted')", &[name.into()]).await?;
                }
                Ok(gone.rows_affected > 0)
            })
        })
        .await?;
    match deleted {
        true => Ok(Response::empty()),
        false => Err(ApiError::not_found("no such note")),
    }
}

/// How often a watch looks for new changes.
const WATCH_POLL: Duration = Duration::from_millis(100);

/// Server-sent events: one event per change after `?after=` (0: from the start), each with
/// the change's id, so a client that reconnects says where it stopped.
async fn watch(state: State, req: Request) -> HandlerResult {
    let mut after: i64 = match req.query("after") {
        Some(after) => after.parse().map_err(|_| ApiError::bad_request("`after` is a change id (a number)"))?,
        None => 0,
    };
    let (response, events) = Response::channel("text/event-stream", 16);
    tokio::spawn(async move {
        loop {
            let changes = state
                .query("SELECT id, name, kind FROM changes WHERE id > ? ORDER BY id LIMIT 100", &[after.into()])
                .await;
            let rows = match changes {
                Ok(changes) => changes.rows,
                // A member between leaders: the next look may succeed.
                Err(err) => {
                    tracing::debug!(error = %err, "a watch could not read the changes");
                    Vec::new()
                }
            };
            for row in rows {
                after = row.get(0).and_then(|v| v.as_i64()).unwrap_or(after);
                let data = serde_json::json!({"name": text(row.get(1)), "kind": text(row.get(2))});
                if events.send(format!("id: {after}\ndata: {data}\n\n").into()).await.is_err() {
                    return; // the watcher went away
                }
            }
            tokio::time::sleep(WATCH_POLL).await;
            if events.is_closed() {
                return;
            }
        }
    });
    response.with_header("cache-control", "no-store")
}

async fn members_file(state: State, _req: Request) -> HandlerResult {
    Response::file(crate::hooks::path(&state), "text/plain; charset=utf-8").await
}

/// Every other member's version, asked of them all at once; a member that does not answer is
/// listed with its error.
async fn fleet(state: State, _req: Request) -> HandlerResult {
    let answers = state.cluster(false)?.query(true, |client| async move { client.status().await }).await;
    let fleet: serde_json::Map<String, serde_json::Value> = answers
        .into_iter()
        .map(|(name, answer)| {
            let value = match answer {
                Ok(status) => serde_json::json!({"version": status.version}),
                Err(err) => serde_json::json!({"error": err.to_string()}),
            };
            (name, value)
        })
        .collect();
    Response::sync(fleet)
}

/// What the member knows of itself and of its cluster, from the `State`.
async fn about(state: State, _req: Request) -> HandlerResult {
    let fingerprint = |identity: microcluster::tls::Identity| identity.fingerprint().unwrap_or_default();
    let nodes: Vec<serde_json::Value> = state
        .dqlite_nodes()
        .await?
        .into_iter()
        .map(|n| serde_json::json!({"id": n.id.to_string(), "address": n.address, "role": format!("{:?}", n.role)}))
        .collect();
    Response::sync(serde_json::json!({
        "server_cert": fingerprint(state.server_cert()),
        "cluster_cert": fingerprint(state.cluster_cert()?),
        "leader": state.leader_address().await?,
        "nodes": nodes,
        "listeners": state.extension_servers(),
        "runtime_extensions": state.has_extension("internal:runtime_extension_v1"),
        "notes_watch": state.has_extension("notes_watch"),
        "unknown_extension": state.has_extension("internal:no_such_thing"),
    }))
}

/// `Upgrade: echo`: the connection then carries back whatever the client writes.
async fn echo(_state: State, mut req: Request) -> HandlerResult {
    let wants_echo = req.headers.get("upgrade").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"echo"));
    if !wants_echo {
        return Err(ApiError::new(microcluster::client::StatusCode::UPGRADE_REQUIRED, "ask with `Upgrade: echo`"));
    }
    let upgrade = req.take_upgrade().ok_or_else(|| ApiError::bad_request("this connection cannot switch protocols"))?;
    tokio::spawn(async move {
        let Ok(mut connection) = upgrade.connection().await else { return };
        let mut buf = vec![0u8; 4096];
        while let Ok(n @ 1..) = connection.read(&mut buf).await {
            if connection.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    Ok(Response::upgrade("echo"))
}
