//! The daemon embedded in an application's own process, as a library user runs it: started
//! with `App::start_until`, driven with `App`'s calls, and stopped from code, without
//! signals; requests under way at the stop get `drain_timeout` to finish, and a task a hook
//! started ends with `State::stopping`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use microcluster::client::{Client, Method};
use microcluster::server::rest::{Action, Endpoint, HandlerResult, Request, Resources, Response};
use microcluster::{App, Args, ConnectionLimits, DaemonArgs, HookFuture, Hooks, Server, State};
use microcluster_tests::free_address;

/// Answers after 1.5 s.
async fn slow(_state: State, _req: Request) -> HandlerResult {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Response::sync("done")
}

/// Starts a task at each start that writes `marker` when the daemon begins to stop.
struct UntilStopping {
    marker: PathBuf,
}

impl Hooks for UntilStopping {
    fn on_start<'a>(&'a self, state: &'a State) -> HookFuture<'a> {
        let (state, marker) = (state.clone(), self.marker.clone());
        tokio::spawn(async move {
            state.stopping().await;
            let _ = std::fs::write(marker, "stopping");
        });
        Box::pin(async { Ok(()) })
    }
}

fn args(drain_timeout: Duration, marker: PathBuf) -> DaemonArgs {
    let slow = Endpoint::new("slow").get(Action::new(slow));
    DaemonArgs {
        shutdown_signals: Vec::new(),
        heartbeat_interval: Duration::from_secs(1),
        connections: ConnectionLimits { drain_timeout, ..ConnectionLimits::default() },
        servers: vec![Server::core("embedded", vec![Resources::new("1.0", vec![slow])]).serve_unix()],
        hooks: Arc::new(UntilStopping { marker }),
        ..DaemonArgs::default()
    }
}

/// Runs the daemon in this process until `stop` fires; returns what `start_until` returned.
fn run(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    drain_timeout: Duration,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), microcluster::AppError>>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = App::new(Args { state_dir: dir.to_owned() });
    let app_dir = dir.to_owned();
    let daemon = rt.spawn(async move {
        app.start_until(args(drain_timeout, dir_marker(&app_dir)), async move {
            let _ = stopped.await;
        })
        .await
    });
    let socket = dir.join("control.socket");
    rt.block_on(async {
        for _ in 0..200 {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the embedded daemon's socket never answered");
    });
    (stop, daemon)
}

/// Where the hook's task writes when the daemon stops.
fn dir_marker(dir: &std::path::Path) -> PathBuf {
    dir.with_file_name("stopping")
}

/// Starts the slow request, stops the daemon while it runs, and returns its outcome.
fn stop_during_a_request(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    stop: tokio::sync::oneshot::Sender<()>,
    daemon: tokio::task::JoinHandle<Result<(), microcluster::AppError>>,
) -> Result<String, microcluster::client::ClientError> {
    let client = Client::unix(dir.join("control.socket")).with_timeout(Duration::from_secs(10));
    let request = rt.spawn(async move { client.query::<String>(Method::GET, "/1.0/slow", None::<&()>).await });
    std::thread::sleep(Duration::from_millis(300));
    stop.send(()).unwrap();
    let outcome = rt.block_on(request).unwrap();
    rt.block_on(daemon).unwrap().unwrap();
    outcome
}

#[test]
fn an_embedded_daemon_is_driven_and_stopped_from_code_and_drains_its_requests() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let address = free_address();
    let (stop, daemon) = run(&rt, &dir, Duration::from_secs(3));
    let app = App::new(Args { state_dir: dir.clone() });
    rt.block_on(app.new_cluster("e1", &address, BTreeMap::new())).unwrap();
    let members = rt.block_on(app.cluster_members()).unwrap();
    assert_eq!(members.iter().map(|m| m.local.name.as_str()).collect::<Vec<_>>(), ["e1"]);
    // A client pinned to the cluster's certificate, as microcluster's RemoteClientWithCert.
    let cluster_pem = std::fs::read_to_string(dir.join("cluster.crt")).unwrap();
    let remote = app.remote_client_with_cert(&address, &cluster_pem).unwrap();
    assert_eq!(rt.block_on(remote.status()).unwrap().name, "e1");
    // Stopped from code while a request runs: it is answered within the drain time, and the
    // task the start hook left running saw the stop.
    assert!(!dir_marker(&dir).exists());
    assert_eq!(stop_during_a_request(&rt, &dir, stop, daemon).unwrap(), "done");
    assert_eq!(std::fs::read_to_string(dir_marker(&dir)).unwrap(), "stopping");
    assert!(
        !dir.join("control.socket").exists()
            || std::os::unix::net::UnixStream::connect(dir.join("control.socket")).is_err()
    );

    // With no drain time, the connection is closed at once and the request gets no answer.
    let (stop, daemon) = run(&rt, &dir, Duration::ZERO);
    let cut = stop_during_a_request(&rt, &dir, stop, daemon);
    assert!(cut.is_err(), "{cut:?}");

    // The App's own calls: a removal the cluster refuses comes back as the refusal, and
    // `shutdown` stops the daemon as SIGTERM would.
    let (_stop, daemon) = run(&rt, &dir, Duration::from_secs(1));
    rt.block_on(async {
        for _ in 0..100 {
            if app.cluster_members().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let refused = rt.block_on(app.remove_cluster_member("e1", false)).unwrap_err();
    assert_eq!(refused.status(), Some(microcluster::client::StatusCode::CONFLICT), "{refused}");
    assert!(refused.to_string().contains("last member"), "{refused}");
    rt.block_on(app.shutdown()).unwrap();
    rt.block_on(daemon).unwrap().unwrap();
}
