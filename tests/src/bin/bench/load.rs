//! The load generator: workers, each on its own keep-alive connection, sending requests one
//! after the other, either a fixed number or for a fixed time. A failed answer counts as an
//! error and the worker goes on; a broken connection is reopened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Error;
use crate::http::{Endpoint, Http, Req};

/// Judges an answer (status, body): whether the request succeeded.
pub(crate) type Check = Box<dyn Fn(u16, &[u8]) -> bool + Send + Sync>;

/// What one worker sends: worker `w`'s `i`-th request, and how its answer is judged.
pub(crate) struct Workload {
    pub(crate) request: Box<dyn Fn(usize, usize) -> Req + Send + Sync>,
    pub(crate) ok: Check,
    /// Pause of each worker between its requests (`bench drive --think-ms`).
    pub(crate) think: Duration,
}

/// When the workers stop.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Until {
    /// After this many requests each.
    Count(usize),
    /// After this long.
    Elapsed(Duration),
}

/// The outcome of a run, over all workers.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Latencies of the successful requests.
    pub(crate) latencies: Vec<Duration>,
    /// Failed requests (an error answer or a broken connection).
    pub(crate) errors: usize,
    /// The first failure, to show what went wrong.
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
}

impl Stats {
    /// The `q` quantile of the successful requests' latencies, in milliseconds.
    pub(crate) fn p(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut v = self.latencies.clone();
        v.sort();
        v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
    }

    /// Successful requests per second.
    pub(crate) fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The share of requests that failed, in percent.
    pub(crate) fn error_percent(&self) -> f64 {
        let total = self.latencies.len() + self.errors;
        if total == 0 { f64::NAN } else { self.errors as f64 * 100.0 / total as f64 }
    }

    fn merge(&mut self, other: Stats) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Runs `workers` workers, worker `w` on `endpoints[w % len]`.
pub(crate) async fn run(
    endpoints: &[Endpoint],
    workers: usize,
    until: Until,
    workload: Workload,
) -> Result<Stats, Error> {
    let workload = Arc::new(workload);
    // Every connection is open before the clock starts.
    let mut connections = Vec::with_capacity(workers);
    for w in 0..workers {
        connections.push(endpoints[w % endpoints.len()].connect().await?);
    }
    let start = Instant::now();
    let deadline = match until {
        Until::Elapsed(d) => Some(start + d),
        Until::Count(_) => None,
    };
    let count = match until {
        Until::Count(n) => n,
        Until::Elapsed(_) => usize::MAX,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (w, http) in connections.into_iter().enumerate() {
        let (workload, endpoint) = (workload.clone(), endpoints[w % endpoints.len()].clone());
        tasks.spawn(worker(w, http, endpoint, workload, count, deadline));
    }
    let mut stats = Stats::default();
    while let Some(result) = tasks.join_next().await {
        stats.merge(result?);
    }
    stats.elapsed = start.elapsed();
    Ok(stats)
}

async fn worker(
    w: usize,
    http: Http,
    endpoint: Endpoint,
    workload: Arc<Workload>,
    count: usize,
    deadline: Option<Instant>,
) -> Stats {
    let mut stats = Stats::default();
    let mut http = Some(http);
    for i in 0..count {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let conn = match http.as_mut() {
            Some(conn) => conn,
            None => match endpoint.connect().await {
                Ok(conn) => http.insert(conn),
                Err(err) => {
                    stats.errors += 1;
                    stats.first_error.get_or_insert_with(|| format!("connecting: {err}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let req = (workload.request)(w, i);
        let sent = Instant::now();
        match conn.send(&req).await {
            Ok((status, body)) if (workload.ok)(status, &body) => stats.latencies.push(sent.elapsed()),
            Ok((status, body)) => {
                stats.errors += 1;
                stats.first_error.get_or_insert_with(|| {
                    let text = String::from_utf8_lossy(&body);
                    format!(
                        "{} {} answered {status}: {}",
                        req.method,
                        req.path,
                        text.chars().take(300).collect::<String>()
                    )
                });
            }
            Err(err) => {
                stats.errors += 1;
                stats.first_error.get_or_insert_with(|| format!("{} {}: {err}", req.method, req.path));
                http = None;
            }
        }
        if !workload.think.is_zero() {
            tokio::time::sleep(workload.think).await;
        }
    }
    stats
}
