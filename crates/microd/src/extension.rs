//! The example application, written the way any user of the library would: two tables, two
//! API extensions, an `extended` endpoint that greets every other member, and hooks that log.

use std::collections::BTreeMap;
use std::sync::Arc;

use microcluster::api::{ClusterMemberLocal, MemberConfig, RoleStatus};
use microcluster::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Resources, Response};
use microcluster::{DaemonArgs, HookFuture, Hooks, InitConfig, SchemaUpdate, Server, State};
use serde::{Deserialize, Serialize};

/// The body members send each other on `POST /1.0/extended`.
#[derive(Debug, Serialize, Deserialize)]
struct ExtendedMessage {
    sender: String,
    message: String,
}

/// What the application contributes to the daemon. `MICROD_TEST_UPGRADE=1` adds a third
/// schema update and API extension: the "next release" that upgrade tests roll out.
pub(crate) fn daemon_args() -> DaemonArgs {
    let mut args = DaemonArgs {
        api_extensions: vec!["custom_extension_a_0".into(), "custom_extension_a_1".into()],
        extensions_schema: vec![
            SchemaUpdate::sql(
                "CREATE TABLE extended_table (
  id     INTEGER  PRIMARY KEY AUTOINCREMENT NOT NULL,
  key    TEXT     NOT NULL,
  value  TEXT     NOT NULL,
  UNIQUE(key)
)",
            ),
            SchemaUpdate::sql(
                "CREATE TABLE some_other_table (
  id         INTEGER  PRIMARY KEY AUTOINCREMENT NOT NULL,
  field_one  TEXT     NOT NULL,
  field_two  TEXT     NOT NULL,
  UNIQUE(field_one),
  UNIQUE(field_two)
)",
            ),
        ],
        hooks: Arc::new(LoggingHooks),
        // Served next to the core API on the member's address, and on the control socket.
        servers: vec![
            Server::core(
                "extended",
                vec![Resources::new(
                    "1.0",
                    vec![Endpoint::new("extended").post(Action::new(extended).allow_untrusted())],
                )],
            )
            .serve_unix(),
            // A listener of its own, off until an address is set (daemon.toml or
            // `microctl servers set greeter ADDRESS`).
            Server::listener(
                "greeter",
                vec![Resources::new(
                    "1.0",
                    vec![
                        Endpoint::new("greeting").get(Action::new(greeting)),
                        Endpoint::new("greeting/public").get(Action::new(public_greeting).allow_untrusted()),
                    ],
                )],
            ),
        ],
        ..DaemonArgs::default()
    };
    if std::env::var_os("MICROD_TEST_UPGRADE").is_some() {
        args.api_extensions.push("custom_extension_a_2".into());
        args.extensions_schema.push(SchemaUpdate::sql(
            "CREATE TABLE upgraded_table (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, note TEXT)",
        ));
    }
    args
}

/// Called by a user: greets every other member and returns their answers, one per line.
/// Called by a member (a notification): answers the greeting.
async fn extended(state: State, req: Request) -> HandlerResult {
    if req.is_notification() {
        let message: ExtendedMessage = req.json()?;
        return Response::sync(format!(
            "cluster member at address {:?} received message {:?} from cluster member at address {:?}",
            state.address(),
            message.message,
            message.sender
        ));
    }
    if !req.is_trusted() && !req.body.is_empty() {
        return Err(ApiError::forbidden("only members may send messages"));
    }
    let greeting = ExtendedMessage { sender: state.address(), message: "Testing 1 2 3...".into() };
    let mut answers = Vec::new();
    for (member, client) in state.peer_clients()? {
        let answer: String =
            client.query(microcluster::client::Method::POST, "/1.0/extended", Some(&greeting)).await.map_err(|e| {
                ApiError::unavailable(format!(
                    "failed to POST to cluster member {:?} at {}: {e}",
                    member.name, member.address
                ))
            })?;
        answers.push(answer);
    }
    let mut out = String::new();
    for answer in answers {
        out.push_str(&answer);
        out.push('\n');
    }
    Response::sync(out)
}

/// For members only: who answers.
async fn greeting(state: State, req: Request) -> HandlerResult {
    let caller = match &req.trust {
        microcluster::server::rest::Trust::Member(name) => name.clone(),
        _ => "you".to_owned(),
    };
    Response::sync(format!("hello {caller}, this is {}", state.name()))
}

/// For anyone.
async fn public_greeting(state: State, _req: Request) -> HandlerResult {
    Response::sync(format!("hello stranger, this is {}", state.name()))
}

/// Logs every hook, as the original example does. For tests, `MICROD_HOOK_FILE=PATH` also
/// appends `MEMBER HOOK DETAIL` lines to PATH (one file can collect several members, in order),
/// and `MICROD_FAIL_HOOK=NAME` makes hook NAME fail.
struct LoggingHooks;

fn logged<'a>(state: &State, hook: &'static str, detail: String) -> HookFuture<'a> {
    tracing::info!(hook, "{detail}");
    if let Some(path) = std::env::var_os("MICROD_HOOK_FILE") {
        use std::io::Write;
        let line = format!("{} {hook} {detail}\n", state.name());
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(err) = written {
            tracing::warn!(error = %err, "recording a hook");
        }
    }
    let fail = std::env::var("MICROD_FAIL_HOOK").is_ok_and(|h| h == hook);
    Box::pin(std::future::ready(if fail {
        Err(format!("{hook} failed on purpose (MICROD_FAIL_HOOK)").into())
    } else {
        Ok(())
    }))
}

impl Hooks for LoggingHooks {
    fn pre_init<'a>(&'a self, state: &'a State, bootstrap: bool, config: &'a InitConfig) -> HookFuture<'a> {
        logged(state, "pre-init", format!("bootstrap={bootstrap} config={config:?}"))
    }
    fn post_bootstrap<'a>(&'a self, state: &'a State, config: &'a InitConfig) -> HookFuture<'a> {
        logged(state, "post-bootstrap", format!("config={config:?}"))
    }
    fn pre_join<'a>(&'a self, state: &'a State, config: &'a InitConfig) -> HookFuture<'a> {
        logged(state, "pre-join", format!("config={config:?}"))
    }
    fn post_join<'a>(&'a self, state: &'a State, config: &'a InitConfig) -> HookFuture<'a> {
        logged(state, "post-join", format!("config={config:?}"))
    }
    fn on_new_member<'a>(&'a self, state: &'a State, member: &'a ClusterMemberLocal) -> HookFuture<'a> {
        logged(state, "on-new-member", format!("{} {}", member.name, member.address))
    }
    fn on_start<'a>(&'a self, state: &'a State) -> HookFuture<'a> {
        logged(state, "on-start", String::new())
    }
    fn pre_remove<'a>(&'a self, state: &'a State, force: bool) -> HookFuture<'a> {
        logged(state, "pre-remove", format!("force={force}"))
    }
    fn post_remove<'a>(&'a self, state: &'a State, force: bool) -> HookFuture<'a> {
        logged(state, "post-remove", format!("force={force}"))
    }
    fn on_heartbeat<'a>(&'a self, state: &'a State, roles: &'a BTreeMap<String, RoleStatus>) -> HookFuture<'a> {
        // The role changes of the round, e.g. `m2:stand-by->voter`.
        let changes: Vec<String> =
            roles.iter().filter(|(_, s)| s.changed()).map(|(name, s)| format!("{name}:{}->{}", s.old, s.new)).collect();
        logged(state, "on-heartbeat", changes.join(" "))
    }
    fn on_daemon_start<'a>(&'a self, state: &'a State) -> HookFuture<'a> {
        logged(state, "on-daemon-start", String::new())
    }
    fn on_daemon_config_update<'a>(&'a self, state: &'a State, config: &'a MemberConfig) -> HookFuture<'a> {
        logged(state, "on-daemon-config-update", format!("{} {:?}", config.name, config.servers))
    }
    fn on_stop<'a>(&'a self, state: &'a State) -> HookFuture<'a> {
        logged(state, "on-stop", String::new())
    }
}
