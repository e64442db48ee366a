//! A replicated key/value HTTP service in about forty lines, like go-dqlite's `dqlite-demo`:
//! `kv --state-dir DIR --api IP:PORT`, initialise with `microctl --state-dir DIR init ...`,
//! then `curl -X PUT -d value http://IP:PORT/key` and `curl http://IP:PORT/key` on any member.
use microcluster::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Resources, Response};
use microcluster::{App, Args, DaemonArgs, SchemaUpdate, Server, State};

async fn get(state: State, req: Request) -> HandlerResult {
    let rows = state.query("SELECT value FROM kv WHERE key = ?", &[req.param("key")?.into()]).await?;
    match rows.rows.first().and_then(|row| row.get(0)).and_then(|v| v.as_str()) {
        Some(value) => Response::sync(value),
        None => Err(ApiError::not_found("no such key")),
    }
}

async fn put(state: State, req: Request) -> HandlerResult {
    let value = String::from_utf8(req.body.to_vec()).map_err(|_| ApiError::bad_request("the value must be UTF-8"))?;
    let sql = "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)";
    state.exec(sql, &[req.param("key")?.into(), value.into()]).await?;
    Ok(Response::empty())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let state_dir = flag("--state-dir").ok_or("usage: kv --state-dir DIR --api IP:PORT")?;
    let api = flag("--api").ok_or("usage: kv --state-dir DIR --api IP:PORT")?;
    let key = Endpoint::new("{key}").get(Action::new(get).allow_untrusted()).put(Action::new(put).allow_untrusted());
    let server = Server::listener("kv", vec![Resources::new("", vec![key])]).default_address(api).plain_http();
    let daemon = DaemonArgs {
        extensions_schema: vec![SchemaUpdate::sql("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")],
        servers: vec![server],
        ..DaemonArgs::default()
    };
    App::new(Args { state_dir: state_dir.into() }).start(daemon).await?;
    Ok(())
}
