//! Harness for end-to-end tests: real `microd` processes on distinct loopback addresses with
//! temporary state directories, driven through the real `microctl`. Every process a test starts
//! is killed when its [`Member`] is dropped, even when the test fails.
//!
//! The binaries are taken from the cargo target directory next to the test executable (`make
//! test` builds them first), or from `MICROD_BIN` / `MICROCTL_BIN`.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod checker;
pub mod disk;
pub mod fuzzing;
pub mod invariants;
pub mod netns;
pub mod powerfail;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Paths of the binaries under test.
#[derive(Debug)]
pub struct Binaries {
    /// `microd`.
    pub microd: PathBuf,
    /// `microctl`.
    pub microctl: PathBuf,
    /// Where they are (examples are in `examples/` below it).
    pub dir: PathBuf,
}

/// Finds the built binaries once.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/<test> or target/<profile>/<bin>
        let mut dir = exe.parent().unwrap().to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let find = |var: &str, name: &str| {
            let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| dir.join(name));
            assert!(
                path.is_file(),
                "{} not found: build the binaries first (`cargo build -p microd -p microctl`, which `make test` does) or set {var}",
                path.display()
            );
            path
        };
        Binaries { microd: find("MICROD_BIN", "microd"), microctl: find("MICROCTL_BIN", "microctl"), dir }
    })
}

/// A free `ip:port` on a distinct loopback address (127.0.0.11 to 127.0.0.30, in turn).
pub fn free_address() -> String {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let octet = 11 + NEXT.fetch_add(1, Ordering::Relaxed) % 20;
    let ip = Ipv4Addr::new(127, 0, 0, octet);
    let listener = TcpListener::bind(SocketAddrV4::new(ip, 0)).unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Polls `check` until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` until it succeeds, asking again for up to 30 s while the answer is an HTTP 503: a
/// member between leaders (after a fault, or as a healed member sets off an election) says so
/// at once instead of waiting. Any other error panics with `what`.
pub fn until_not_503<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Ok(value) => return value,
            Err(e) if e.contains("HTTP 503") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// What a `microctl` run produced.
#[derive(Debug)]
pub struct CtlOutput {
    /// Whether it exited 0.
    pub success: bool,
    /// Exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for CtlOutput {
    fn from(out: Output) -> Self {
        CtlOutput {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// One member: a state directory, an address and (when started) a `microd` process.
#[derive(Debug)]
pub struct Member {
    /// Member name.
    pub name: String,
    /// Member address.
    pub address: String,
    /// State directory.
    pub dir: PathBuf,
    /// Extra `microd` arguments.
    pub args: Vec<String>,
    /// Extra environment variables for `microd`.
    pub env: Vec<(String, String)>,
    /// Another daemon built on the library (e.g. the `kv` example) to run instead of `microd`.
    pub binary: Option<PathBuf>,
    /// A network namespace to run the daemon in (see [`netns`]).
    pub netns: Option<String>,
    /// Where the daemon's output goes (by default beside the state directory; elsewhere for a
    /// state directory on a disk that fills up).
    pub log_file: Option<PathBuf>,
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl Member {
    /// A member with a fresh temporary state directory and address (not started).
    pub fn new(name: &str) -> Member {
        let tmp = tempfile::Builder::new().prefix(&format!("microd-{name}-")).tempdir().unwrap();
        Member {
            name: name.to_owned(),
            address: free_address(),
            dir: tmp.path().join("state"),
            args: vec!["--debug".into(), "--heartbeat".into(), "1s".into()],
            env: Vec::new(),
            binary: None,
            netns: None,
            log_file: None,
            _tmp: Some(tmp),
            child: None,
        }
    }

    /// A member at a given address and state directory (kept after the member is dropped).
    pub fn at(name: &str, address: &str, dir: &Path) -> Member {
        Member {
            name: name.to_owned(),
            address: address.to_owned(),
            dir: dir.to_owned(),
            args: vec!["--debug".into(), "--heartbeat".into(), "1s".into()],
            env: Vec::new(),
            binary: None,
            netns: None,
            log_file: None,
            _tmp: None,
            child: None,
        }
    }

    /// The file the daemon's standard output and error are appended to.
    pub fn log_path(&self) -> PathBuf {
        self.log_file.clone().unwrap_or_else(|| self.dir.with_file_name(format!("{}.log", self.name)))
    }

    /// Starts `microd` and waits until its control socket accepts connections (an initialised
    /// member may still wait for its cluster's quorum; see [`Member::wait_ready`]).
    pub fn start(&mut self) -> &mut Member {
        self.spawn();
        let name = self.name.clone();
        let socket = self.dir.join("control.socket");
        wait_until(&format!("{name}'s control socket"), Duration::from_secs(20), || {
            self.assert_running();
            std::os::unix::net::UnixStream::connect(&socket).ok().map(drop)
        });
        self
    }

    /// Starts `microd` without waiting for anything (e.g. for a daemon expected to refuse to
    /// start; see [`Member::exit_code`]).
    pub fn spawn(&mut self) -> &mut Member {
        assert!(self.child.is_none(), "{} is already running", self.name);
        std::fs::create_dir_all(self.dir.parent().unwrap()).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let binary = self.binary.clone().unwrap_or_else(|| binaries().microd.clone());
        // `ip netns exec` execs the daemon, so the child's pid is the daemon's.
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("--state-dir")
            .arg(&self.dir)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self
    }

    /// Waits until `microctl waitready` succeeds.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let name = self.name.clone();
        wait_until(&format!("{name} to be ready"), timeout, || {
            self.assert_running();
            self.ctl(&["waitready", "--timeout", "1"]).success.then_some(())
        });
    }

    fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("microd {} exited with {status}; its log:\n{}", self.name, self.log());
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends a signal (`TERM`, `KILL`, `STOP`, `CONT`, ...). `STOP` returns once the daemon is
    /// stopped: the kernel delivers a signal when the process next runs, which on a loaded
    /// machine can be after the next request already reached it.
    pub fn signal(&self, signal: &str) {
        let Some(pid) = self.pid() else { return };
        let sent = Command::new("kill").args(["-s", signal, &pid.to_string()]).status().is_ok_and(|s| s.success());
        if signal == "STOP" {
            assert!(sent, "kill -s STOP {pid} ({}) failed", self.name);
            // Every thread: each stops when it next runs.
            wait_until(&format!("{} stopped", self.name), Duration::from_secs(10), || {
                let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
                for task in tasks {
                    let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
                    // The state follows the command name, which is in parentheses.
                    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?.to_owned();
                    if !matches!(state.as_str(), "T" | "t") {
                        return None;
                    }
                }
                Some(())
            });
        }
    }

    /// Waits for the process to exit (up to `timeout`); returns how long it took, or `None`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        let child = self.child.as_mut()?;
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits for the process to exit and returns its exit code (None if it did not exit in time).
    pub fn exit_code(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        let child = self.child.as_mut()?;
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILLs the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `microctl --state-dir DIR args...`.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        Command::new(&binaries().microctl).arg("--state-dir").arg(&self.dir).args(args).output().unwrap().into()
    }

    /// Runs `microctl` with `stdin` as standard input.
    pub fn ctl_stdin(&self, args: &[&str], stdin: &str) -> CtlOutput {
        use std::io::Write;
        let mut child = Command::new(&binaries().microctl)
            .arg("--state-dir")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap().into()
    }

    /// Runs `microctl` and returns its standard output, panicking (with the log) on failure.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.success,
            "microctl {args:?} on {} failed: {}\n--- microd log ---\n{}",
            self.name,
            out.stderr,
            self.log()
        );
        out.stdout
    }

    /// Bootstraps a new cluster with this member.
    pub fn bootstrap(&self) {
        self.ctl_ok(&["init", &self.name, &self.address, "--bootstrap"]);
    }

    /// The member named `name` in `cluster list --format json`, as seen from this member.
    pub fn member(&self, name: &str) -> serde_json::Value {
        self.members().into_iter().find(|m| m["name"] == name).unwrap_or_default()
    }

    /// `cluster list --format json` as seen from this member.
    pub fn members(&self) -> Vec<serde_json::Value> {
        let text = self.ctl_ok(&["cluster", "list", "--format", "json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("cluster list JSON: {e}: {text}"))
    }

    /// The value of the first series in this member's metrics that starts with `prefix` (a
    /// name followed by a space or `{labels}`), 0 if there is none.
    pub fn metric(&self, prefix: &str) -> u64 {
        let scrape = checker::unix_request(&self.socket(), "GET", "/core/1.0/metrics", "", Duration::from_secs(5));
        let (_, text) = scrape.unwrap_or_else(|e| panic!("metrics of {}: {e}", self.name));
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }

    /// A mutual-TLS client of the member at `address`, presenting this member's certificate
    /// (what this member's own requests to it look like).
    pub fn client_to(&self, address: &str) -> microcluster::client::Client {
        use microcluster::tls;
        let read = |file: &str| std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        let identity = tls::Identity { cert_pem: read("server.crt"), key_pem: read("server.key") };
        let cluster = tls::fingerprint_pem(&read("cluster.crt"))
            .unwrap_or_else(|e| panic!("{}'s cluster certificate: {e}", self.name));
        let config = tls::client_config(Some(&identity), vec![cluster])
            .unwrap_or_else(|e| panic!("{}'s TLS client: {e}", self.name));
        microcluster::client::Client::https(address, config)
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.socket")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Several members, started (not initialised).
#[derive(Debug)]
pub struct Cluster {
    /// The members, in order.
    pub members: Vec<Member>,
}

impl Cluster {
    /// Starts `n` daemons named `m1`..`mN`.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_| {})
    }

    /// Starts `n` daemons, letting `prepare` adjust each member (arguments, environment) first.
    pub fn start_with(n: usize, prepare: impl Fn(&mut Member)) -> Cluster {
        let mut members: Vec<Member> = (1..=n).map(|i| Member::new(&format!("m{i}"))).collect();
        members.iter_mut().for_each(&prepare);
        for member in &mut members {
            member.start();
        }
        Cluster { members }
    }

    /// Starts `n` daemons, bootstraps the first and joins the others through it.
    pub fn form(n: usize) -> Cluster {
        let cluster = Cluster::start(n);
        cluster.members[0].bootstrap();
        for i in 1..n {
            cluster.join(i, 0);
        }
        cluster
    }

    /// Joins member `i` with a token issued by member `via`.
    pub fn join(&self, i: usize, via: usize) {
        self.join_member(&self.members[i], via);
    }

    /// Joins a member (running, not necessarily part of `members`) through member `via`.
    pub fn join_member(&self, joiner: &Member, via: usize) {
        let token = self.members[via].ctl_ok(&["tokens", "add", &joiner.name]);
        joiner.ctl_ok(&["init", &joiner.name, &joiner.address, "--token", token.trim()]);
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }

    /// The member that leads, as the first member that answers sees it (waiting through an
    /// election); members in `except` are not asked (frozen, killed).
    pub fn leader_except(&self, except: &[usize]) -> usize {
        wait_until("a known leader", Duration::from_secs(60), || {
            self.members.iter().enumerate().filter(|(i, _)| !except.contains(i)).find_map(|(_, m)| {
                let out = m.ctl(&["cluster", "list", "--format", "json"]);
                let members: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).ok()?;
                let name = members.iter().find(|m| m["leader"] == true)?["name"].as_str()?.to_owned();
                self.members.iter().position(|m| m.name == name)
            })
        })
    }

    /// The member that leads (see [`Cluster::leader_except`]).
    pub fn leader(&self) -> usize {
        self.leader_except(&[])
    }
}
