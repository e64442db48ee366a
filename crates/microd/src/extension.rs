//! The example application, written the way any user of the library would: two tables, two
//! API extensions, an `extended` endpoint that greets every other member, and hooks that log.

use std::sync::Arc;

use microcluster::api::ClusterMemberLocal;
use microcluster::server::rest::{
    Action, ApiError, Endpoint, HandlerResult, Request, Resources, Response,
};
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
    let greeting = ExtendedMessage {
        sender: state.address(),
        message: "Testing 1 2 3...".into(),
    };
    let mut answers = Vec::new();
    for (member, client) in state.peer_clients()? {
        let answer: String = client
            .query(
                microcluster::client::Method::POST,
                "/1.0/extended",
                Some(&greeting),
            )
            .await
            .map_err(|e| {
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

/// Logs every hook, as the original example does.
struct LoggingHooks;

fn logged<'a>(hook: &'static str, detail: String) -> HookFuture<'a> {
    tracing::info!(hook, "{detail}");
    Box::pin(std::future::ready(Ok(())))
}

impl Hooks for LoggingHooks {
    fn pre_init<'a>(
        &'a self,
        _state: &'a State,
        bootstrap: bool,
        config: &'a InitConfig,
    ) -> HookFuture<'a> {
        logged(
            "pre-init",
            format!("bootstrap={bootstrap} config={config:?}"),
        )
    }
    fn post_bootstrap<'a>(&'a self, state: &'a State, config: &'a InitConfig) -> HookFuture<'a> {
        logged(
            "post-bootstrap",
            format!("{} bootstrapped with config {config:?}", state.name()),
        )
    }
    fn pre_join<'a>(&'a self, state: &'a State, _config: &'a InitConfig) -> HookFuture<'a> {
        logged("pre-join", format!("{} is joining", state.name()))
    }
    fn post_join<'a>(&'a self, state: &'a State, _config: &'a InitConfig) -> HookFuture<'a> {
        logged("post-join", format!("{} joined", state.name()))
    }
    fn on_new_member<'a>(
        &'a self,
        state: &'a State,
        member: &'a ClusterMemberLocal,
    ) -> HookFuture<'a> {
        logged(
            "on-new-member",
            format!(
                "{} sees new member {} at {}",
                state.name(),
                member.name,
                member.address
            ),
        )
    }
    fn on_start<'a>(&'a self, state: &'a State) -> HookFuture<'a> {
        logged("on-start", format!("{} started", state.name()))
    }
    fn pre_remove<'a>(&'a self, state: &'a State, force: bool) -> HookFuture<'a> {
        logged(
            "pre-remove",
            format!("{} is leaving (force={force})", state.name()),
        )
    }
    fn post_remove<'a>(&'a self, state: &'a State, force: bool) -> HookFuture<'a> {
        logged(
            "post-remove",
            format!("{} saw a member leave (force={force})", state.name()),
        )
    }
    fn on_heartbeat<'a>(&'a self, _state: &'a State) -> HookFuture<'a> {
        tracing::debug!(hook = "on-heartbeat", "heartbeat round done");
        Box::pin(std::future::ready(Ok(())))
    }
    fn on_stop<'a>(&'a self, state: &'a State) -> HookFuture<'a> {
        logged("on-stop", format!("{} stopping", state.name()))
    }
}
