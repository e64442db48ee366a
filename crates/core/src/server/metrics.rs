//! The member's metrics: counters and fixed-bucket histograms that the hot paths (request
//! dispatch, the write queue, the heartbeat, the dqlite tunnel) update with atomics, and
//! [`Exposition`], which renders them in the Prometheus text exposition format 0.0.4 that
//! `GET /core/1.0/metrics` serves.
//!
//! Hand-written rather than a crate: the format is a few lines of text per series, and what
//! the daemon needs (counters, histograms with fixed buckets, a few labelled families whose
//! label values the code bounds) fits in this file without new dependencies. Gauges that
//! describe the present (database status, leadership, members, queue depth) are computed at
//! scrape time by the endpoint instead of being kept up to date here.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};

/// The content type of the text exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `route` label of requests that matched no endpoint (so a scan of random paths adds one
/// series, not one per path).
pub(crate) const UNMATCHED: &str = "unmatched";

/// Most series one labelled family holds; later label sets share one series labelled
/// [`OVERFLOW`]. Every label value is bounded by the code, so this is only a safety net.
const MAX_SERIES: usize = 1000;

/// The label value of the shared series past [`MAX_SERIES`], and of unusual HTTP methods.
const OVERFLOW: &str = "other";

/// Seconds, for request and write latencies: 1 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Seconds, for heartbeat rounds (which wait up to 2 s for each member's answer).
const ROUND_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Jobs per write batch (the queue commits at most 64 together).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// How dqlite errors returned to the daemon's callers are classified (`kind` label).
const ERROR_KINDS: &[&str] = &["busy", "not_leader", "no_leader", "ambiguous", "io", "other"];

/// Why a listener closed a connection before its client did (`rest::limits`): to make room
/// when its share was full, refused while every one was busy, or for taking too long over a TLS
/// handshake, a request head or between requests.
pub(crate) const CLOSED_EVICTED: &str = "evicted";
pub(crate) const CLOSED_REFUSED: &str = "refused";
pub(crate) const CLOSED_HANDSHAKE: &str = "handshake_timeout";
pub(crate) const CLOSED_HEADER: &str = "header_timeout";
pub(crate) const CLOSED_IDLE: &str = "idle_timeout";
/// Every reason, for the metric's series.
const CLOSE_REASONS: [&str; 5] = [CLOSED_EVICTED, CLOSED_REFUSED, CLOSED_HANDSHAKE, CLOSED_HEADER, CLOSED_IDLE];

/// Which dial failed (`path` label): our database client's, or raft's connect function.
pub(crate) const DIAL_CLIENT: &str = "client";
/// See [`DIAL_CLIENT`].
pub(crate) const DIAL_RAFT: &str = "raft";

/// How a merged write batch ended (`outcome` label): every statement ran in one round trip...
pub(crate) const MERGED: &str = "merged";
/// ... or one failed, the group was undone and its requests ran one by one.
pub(crate) const MERGE_UNDONE: &str = "undone";

/// How the write queue's wait for the writers of its last commit ended (`outcome` label): they
/// all came back...
pub(crate) const GATHER_FULL: &str = "full";
/// ... or the wait ran out first.
pub(crate) const GATHER_TIMEOUT: &str = "timeout";

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current count.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Observations counted into fixed buckets, with their sum.
#[derive(Debug)]
pub(crate) struct Histogram {
    /// Upper bounds, ascending; `+Inf` is implied.
    bounds: &'static [f64],
    /// One count per bound (not cumulative) and a last one for `+Inf`.
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum: AtomicU64::new(0) }
    }

    /// Records one observation.
    pub(crate) fn observe(&self, value: f64) {
        let bucket = self.bounds.iter().position(|bound| value <= *bound).unwrap_or(self.bounds.len());
        if let Some(count) = self.counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + value).to_bits()));
    }

    /// Records a duration in seconds.
    pub(crate) fn observe_duration(&self, took: Duration) {
        self.observe(took.as_secs_f64());
    }
}

/// One series of a family: its label values (in the family's label order) and its metric.
type Series<M> = (Box<[String]>, Arc<M>);

/// Label names with their values.
type Labels = Vec<(&'static str, String)>;

/// One metric per combination of label values, created on first use.
#[derive(Debug)]
pub(crate) struct Family<M> {
    labels: &'static [&'static str],
    make: fn() -> M,
    series: RwLock<Vec<Series<M>>>,
}

impl<M> Family<M> {
    fn new(labels: &'static [&'static str], make: fn() -> M) -> Family<M> {
        Family { labels, make, series: RwLock::new(Vec::new()) }
    }

    /// The metric for these label values (one per label, in order).
    pub(crate) fn with(&self, values: &[&str]) -> Arc<M> {
        if let Some(metric) = find(&self.series.read().unwrap_or_else(PoisonError::into_inner), values) {
            return metric;
        }
        let mut series = self.series.write().unwrap_or_else(PoisonError::into_inner);
        let overflow = vec![OVERFLOW; self.labels.len()];
        let values = if series.len() < MAX_SERIES { values } else { overflow.as_slice() };
        if let Some(metric) = find(&series, values) {
            return metric;
        }
        let metric = Arc::new((self.make)());
        series.push((values.iter().map(|v| (*v).to_owned()).collect(), metric.clone()));
        metric
    }

    /// Every series with its labels, sorted by label values (so the output is stable).
    fn snapshot(&self) -> Vec<(Labels, Arc<M>)> {
        let mut series: Vec<_> = self
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(values, metric)| (self.labels.iter().copied().zip(values.iter().cloned()).collect(), metric.clone()))
            .collect();
        series.sort_by(|a: &(Labels, _), b| a.0.cmp(&b.0));
        series
    }
}

/// The series with exactly these label values.
fn find<M>(series: &[Series<M>], values: &[&str]) -> Option<Arc<M>> {
    series
        .iter()
        .find(|(labels, _)| labels.iter().map(String::as_str).eq(values.iter().copied()))
        .map(|(_, m)| m.clone())
}

/// Everything a member counts while it runs (one per daemon, kept across resets).
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Request latency by route pattern, method and status code.
    requests: Family<Histogram>,
    /// Jobs committed together by the write queue.
    pub(crate) write_batch_size: Histogram,
    /// How long the write queue took per batch.
    pub(crate) write_batch_duration: Histogram,
    /// "database is locked" answers the write queue retried.
    pub(crate) write_busy_retries: Counter,
    /// Batches whose statements ran in one round trip, and those that fell back to one by one.
    pub(crate) write_batches_merged: Family<Counter>,
    /// Waits of the write queue for the writers of its last commit, by outcome.
    pub(crate) write_gathers: Family<Counter>,
    /// SQL write requests this member passed to the leader.
    pub(crate) writes_forwarded: Counter,
    /// Times the leader this member's node reports moved to another member.
    pub(crate) leader_changes: Counter,
    /// Linearizable reads that were about to go, or went, to a node other than the confirmed
    /// leader, and ran on the confirmed leader instead.
    pub(crate) reads_redirected: Counter,
    /// Times the node was restarted because raft had stopped writing its log.
    pub(crate) raft_log_restarts: Counter,
    heartbeat_rounds: Counter,
    heartbeat_failures: Counter,
    heartbeat_duration: Histogram,
    /// Heartbeats sent without the member list (the member's trust store held it already).
    pub(crate) heartbeat_lists_left_out: Counter,
    /// Times freed memory was given back to the kernel after a burst of activity.
    pub(crate) memory_releases: Counter,
    /// dqlite errors returned to the daemon's callers, by kind.
    dqlite_errors: Family<Counter>,
    /// Failed dials of the dqlite tunnel, by path.
    dial_errors: Family<Counter>,
    /// Connections a listener closed before their client did, by reason (`rest::limits`).
    pub(crate) connections_closed: Family<Counter>,
    /// Accepts that failed (e.g. out of file descriptors).
    pub(crate) accept_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let metrics = Metrics {
            requests: Family::new(&["route", "method", "code"], || Histogram::new(LATENCY_BUCKETS)),
            write_batch_size: Histogram::new(BATCH_BUCKETS),
            write_batch_duration: Histogram::new(LATENCY_BUCKETS),
            write_busy_retries: Counter::default(),
            write_batches_merged: Family::new(&["outcome"], Counter::default),
            write_gathers: Family::new(&["outcome"], Counter::default),
            writes_forwarded: Counter::default(),
            leader_changes: Counter::default(),
            reads_redirected: Counter::default(),
            raft_log_restarts: Counter::default(),
            heartbeat_rounds: Counter::default(),
            heartbeat_failures: Counter::default(),
            heartbeat_duration: Histogram::new(ROUND_BUCKETS),
            heartbeat_lists_left_out: Counter::default(),
            memory_releases: Counter::default(),
            dqlite_errors: Family::new(&["kind"], Counter::default),
            dial_errors: Family::new(&["path"], Counter::default),
            connections_closed: Family::new(&["reason"], Counter::default),
            accept_errors: Counter::default(),
        };
        // Present from the start at 0, so rates work before the first error.
        for kind in ERROR_KINDS {
            metrics.dqlite_errors.with(&[kind]);
        }
        for path in [DIAL_CLIENT, DIAL_RAFT] {
            metrics.dial_errors.with(&[path]);
        }
        for outcome in [MERGED, MERGE_UNDONE] {
            metrics.write_batches_merged.with(&[outcome]);
        }
        for outcome in [GATHER_FULL, GATHER_TIMEOUT] {
            metrics.write_gathers.with(&[outcome]);
        }
        for reason in CLOSE_REASONS {
            metrics.connections_closed.with(&[reason]);
        }
        metrics
    }
}

impl Metrics {
    /// Records one answered request; `route` is the endpoint's pattern or [`UNMATCHED`].
    pub(crate) fn request(&self, route: &str, method: &Method, status: StatusCode, took: Duration) {
        // Extension methods are whatever a client sends: never a label value of their own.
        let method = match *method {
            Method::GET | Method::POST | Method::PUT | Method::PATCH | Method::DELETE | Method::HEAD => method.as_str(),
            Method::OPTIONS => method.as_str(),
            _ => OVERFLOW,
        };
        self.requests.with(&[route, method, status.as_str()]).observe_duration(took);
    }

    /// Counts the error of a database call, unless it was the statement's own fault (those
    /// show as 4xx requests instead).
    pub(crate) fn record<T>(&self, result: &Result<T, dqlite::Error>) {
        let Err(err) = result else { return };
        let kind = if err.is_busy() {
            "busy"
        } else if err.is_not_leader() {
            "not_leader"
        } else if matches!(err, dqlite::Error::NoLeader { .. }) {
            "no_leader"
        } else if err.is_leadership_lost() || matches!(err, dqlite::Error::LeaderMoved { .. }) {
            "ambiguous"
        } else if err.is_connection_lost() {
            "io"
        } else if err.is_statement_error() {
            return;
        } else {
            "other"
        };
        self.dqlite_errors.with(&[kind]).inc();
    }

    /// Counts a failed dial of the dqlite tunnel ([`DIAL_CLIENT`] or [`DIAL_RAFT`]).
    pub(crate) fn dial_failed(&self, path: &'static str) {
        self.dial_errors.with(&[path]).inc();
    }

    /// Counts a connection a listener closed before its client did.
    pub(crate) fn connection_closed(&self, reason: &'static str) {
        self.connections_closed.with(&[reason]).inc();
    }

    /// Starts timing a heartbeat round; it counts as failed unless
    /// [`RoundTimer::succeeded`] is called.
    pub(crate) fn heartbeat_round(&self) -> RoundTimer<'_> {
        RoundTimer { metrics: self, started: Instant::now(), ok: false }
    }

    /// Writes every metric held here.
    pub(crate) fn render(&self, out: &mut Exposition) {
        out.family(
            "microcluster_http_request_duration_seconds",
            Kind::Histogram,
            "Time to answer a REST request, by route pattern (\"unmatched\" for unknown paths), method and status code.",
        );
        for (labels, histogram) in self.requests.snapshot() {
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            out.histogram("microcluster_http_request_duration_seconds", &labels, &histogram);
        }
        out.family(
            "microcluster_write_batch_size",
            Kind::Histogram,
            "Write requests the write queue committed together in one batch.",
        );
        out.histogram("microcluster_write_batch_size", &[], &self.write_batch_size);
        out.family(
            "microcluster_write_batch_duration_seconds",
            Kind::Histogram,
            "Time the write queue took to run and commit one batch.",
        );
        out.histogram("microcluster_write_batch_duration_seconds", &[], &self.write_batch_duration);
        counter(
            out,
            "microcluster_write_busy_retries_total",
            "\"database is locked\" answers (another member writing) the write queue retried.",
            &self.write_busy_retries,
        );
        labelled_counters(
            out,
            "microcluster_write_batches_merged_total",
            "Batches of plain INSERT/UPDATE/DELETE requests whose statements ran in one round trip (outcome=\"merged\"), and those undone because one failed, then run one by one (outcome=\"undone\").",
            &self.write_batches_merged,
        );
        labelled_counters(
            out,
            "microcluster_write_gathers_total",
            "Times the write queue waited for the writers its last commit answered before starting a batch: all came back (outcome=\"full\"), or the wait ran out (outcome=\"timeout\").",
            &self.write_gathers,
        );
        counter(
            out,
            "microcluster_sql_writes_forwarded_total",
            "SQL write requests this member (a follower) passed to the leader's write queue.",
            &self.writes_forwarded,
        );
        counter(
            out,
            "microcluster_leader_changes_total",
            "Times the dqlite leader this member's node reports moved to another member (the first leader seen after start is not a change).",
            &self.leader_changes,
        );
        counter(
            out,
            "microcluster_reads_redirected_total",
            "Linearizable reads whose connection led to a node other than the leader a majority of the voters had just confirmed (a leader that froze or was cut off and does not know it was replaced, or a leader change), sent to the confirmed leader instead.",
            &self.reads_redirected,
        );
        counter(
            out,
            "microcluster_raft_log_restarts_total",
            "Times this member restarted its dqlite node after its raft log could not be written (a full, read-only or failing disk) and the disk had room again.",
            &self.raft_log_restarts,
        );
        counter(
            out,
            "microcluster_heartbeat_rounds_total",
            "Heartbeat rounds this member ran as the dqlite leader.",
            &self.heartbeat_rounds,
        );
        counter(
            out,
            "microcluster_heartbeat_rounds_failed_total",
            "Heartbeat rounds this member started as the leader that failed before their end.",
            &self.heartbeat_failures,
        );
        out.family(
            "microcluster_heartbeat_round_duration_seconds",
            Kind::Histogram,
            "Time one heartbeat round took on the leader.",
        );
        out.histogram("microcluster_heartbeat_round_duration_seconds", &[], &self.heartbeat_duration);
        counter(
            out,
            "microcluster_heartbeat_lists_left_out_total",
            "Heartbeats this member sent as the leader without the member list, because the member's last answer showed its trust store held that list already.",
            &self.heartbeat_lists_left_out,
        );
        counter(
            out,
            "microcluster_memory_releases_total",
            "Times the member, quiet again after a busy period, gave the memory its dqlite node had freed back to the kernel.",
            &self.memory_releases,
        );
        labelled_counters(
            out,
            "microcluster_dqlite_errors_total",
            "dqlite errors the database calls of this member returned after their retries, by kind (statement errors excluded).",
            &self.dqlite_errors,
        );
        labelled_counters(
            out,
            "microcluster_dqlite_dial_errors_total",
            "Failed dials of the dqlite tunnel to another member, by who dialled (our database client or raft).",
            &self.dial_errors,
        );
        labelled_counters(
            out,
            "microcluster_http_connections_closed_total",
            "Connections a listener closed before their client did: to make room when its share was full (reason=\"evicted\"), refused while every one was busy (\"refused\"), or for taking too long over a TLS handshake, a request head or between requests (\"handshake_timeout\", \"header_timeout\", \"idle_timeout\").",
            &self.connections_closed,
        );
        counter(
            out,
            "microcluster_http_accept_errors_total",
            "Failed accepts on the member's listeners (e.g. out of file descriptors); each is followed by a pause.",
            &self.accept_errors,
        );
    }
}

fn counter(out: &mut Exposition, name: &str, help: &str, counter: &Counter) {
    out.family(name, Kind::Counter, help);
    out.sample(name, &[], counter.get());
}

fn labelled_counters(out: &mut Exposition, name: &str, help: &str, family: &Family<Counter>) {
    out.family(name, Kind::Counter, help);
    for (labels, counter) in family.snapshot() {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        out.sample(name, &labels, counter.get());
    }
}

/// Times one heartbeat round (see [`Metrics::heartbeat_round`]); records it when dropped.
#[derive(Debug)]
pub(crate) struct RoundTimer<'m> {
    metrics: &'m Metrics,
    started: Instant,
    ok: bool,
}

impl RoundTimer<'_> {
    /// The round reached its end.
    pub(crate) fn succeeded(mut self) {
        self.ok = true;
    }
}

impl Drop for RoundTimer<'_> {
    fn drop(&mut self) {
        self.metrics.heartbeat_rounds.inc();
        if !self.ok {
            self.metrics.heartbeat_failures.inc();
        }
        self.metrics.heartbeat_duration.observe_duration(self.started.elapsed());
    }
}

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A sample's value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Number {
    Int(u64),
    Float(f64),
}

impl From<u64> for Number {
    fn from(v: u64) -> Number {
        Number::Int(v)
    }
}

impl From<usize> for Number {
    fn from(v: usize) -> Number {
        Number::Int(v as u64)
    }
}

impl From<bool> for Number {
    fn from(v: bool) -> Number {
        Number::Int(u64::from(v))
    }
}

impl From<f64> for Number {
    fn from(v: f64) -> Number {
        Number::Float(v)
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Number::Int(v) => write!(f, "{v}"),
            Number::Float(v) if v.is_nan() => f.write_str("NaN"),
            Number::Float(v) if v == f64::INFINITY => f.write_str("+Inf"),
            Number::Float(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            Number::Float(v) => write!(f, "{v}"),
        }
    }
}

/// Text in the Prometheus exposition format 0.0.4: per family a `# HELP` and a `# TYPE` line,
/// then its samples, `name{label="value",...} value`.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family (write it once, before its samples).
    pub(crate) fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample.
    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Number>) {
        self.text.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.text, " {}", value.into());
    }

    /// A histogram's samples: cumulative `_bucket`s up to `+Inf`, `_sum` and `_count`.
    pub(crate) fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        // Read every bucket once, so `_count` and the `+Inf` bucket agree.
        let counts: Vec<u64> = histogram.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let mut cumulative = 0;
        for (i, count) in counts.iter().enumerate() {
            cumulative += count;
            let bound = histogram.bounds.get(i).map_or(Number::Float(f64::INFINITY), |b| Number::Float(*b));
            let _ = write!(self.text, "{name}_bucket");
            self.labels(labels, Some(&bound.to_string()));
            let _ = writeln!(self.text, " {cumulative}");
        }
        let sum = f64::from_bits(histogram.sum.load(Ordering::Relaxed));
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative);
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.text.push('{');
        let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
        for (i, (key, value)) in all.enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            self.text.push_str(key);
            self.text.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => self.text.push_str("\\\\"),
                    '"' => self.text.push_str("\\\""),
                    '\n' => self.text.push_str("\\n"),
                    c => self.text.push(c),
                }
            }
            self.text.push('"');
        }
        self.text.push('}');
    }

    /// The text.
    pub(crate) fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that every line is a `# HELP`/`# TYPE` comment or `name{labels} value`, and
    /// returns the samples as (name, labels text, value).
    fn parse(text: &str) -> Vec<(String, String, f64)> {
        assert!(text.ends_with('\n'), "the text must end with a newline");
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                assert!(comment.starts_with("HELP ") || comment.starts_with("TYPE "), "odd comment: {line}");
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value: {line}"));
            let name = &line[..name_end];
            assert!(
                !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                    && !name.starts_with(|c: char| c.is_ascii_digit()),
                "bad name: {line}"
            );
            let rest = &line[name_end..];
            let (labels, value) = match rest.strip_prefix('{') {
                Some(inner) => {
                    // Walk the label pairs, honouring escapes inside quoted values.
                    let mut chars = inner.char_indices();
                    let end = loop {
                        let (i, c) = chars.next().unwrap_or_else(|| panic!("unclosed labels: {line}"));
                        if c == '}' {
                            break i;
                        }
                        assert!(c.is_ascii_alphanumeric() || c == '_' || c == '=' || c == ',', "bad label: {line}");
                        if c == '=' {
                            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "unquoted value: {line}");
                            loop {
                                match chars.next().map(|(_, c)| c) {
                                    Some('\\') => {
                                        assert!(matches!(chars.next().map(|(_, c)| c), Some('\\' | '"' | 'n')))
                                    }
                                    Some('"') => break,
                                    Some('\n') | None => panic!("unterminated value: {line}"),
                                    Some(_) => {}
                                }
                            }
                        }
                    };
                    (&inner[..end], &inner[end + 1..])
                }
                None => ("", rest),
            };
            let value = value.strip_prefix(' ').unwrap_or_else(|| panic!("no space before the value: {line}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
            };
            samples.push((name.to_owned(), labels.to_owned(), value));
        }
        samples
    }

    #[test]
    fn a_small_registry_renders_exactly() {
        let histogram = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 0.7, 3.0] {
            histogram.observe(v);
        }
        let mut out = Exposition::default();
        out.family("demo_total", Kind::Counter, "Things.");
        out.sample("demo_total", &[], 7u64);
        out.family("demo_up", Kind::Gauge, "Up or not.");
        out.sample("demo_up", &[("role", "voter"), ("status", "ONLINE")], true);
        out.family("demo_seconds", Kind::Histogram, "Time.");
        out.histogram("demo_seconds", &[("route", "/x/{name}")], &histogram);
        assert_eq!(
            out.finish(),
            "# HELP demo_total Things.\n# TYPE demo_total counter\ndemo_total 7\n\
             # HELP demo_up Up or not.\n# TYPE demo_up gauge\ndemo_up{role=\"voter\",status=\"ONLINE\"} 1\n\
             # HELP demo_seconds Time.\n# TYPE demo_seconds histogram\n\
             demo_seconds_bucket{route=\"/x/{name}\",le=\"0.1\"} 1\n\
             demo_seconds_bucket{route=\"/x/{name}\",le=\"1\"} 3\n\
             demo_seconds_bucket{route=\"/x/{name}\",le=\"+Inf\"} 4\n\
             demo_seconds_sum{route=\"/x/{name}\"} 4.25\n\
             demo_seconds_count{route=\"/x/{name}\"} 4\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = Exposition::default();
        out.family("x", Kind::Gauge, "a \\ b\nc");
        out.sample("x", &[("v", "q\"uo\\te\nnl")], 1.5);
        let text = out.finish();
        assert_eq!(text, "# HELP x a \\\\ b\\nc\n# TYPE x gauge\nx{v=\"q\\\"uo\\\\te\\nnl\"} 1.5\n");
        assert_eq!(parse(&text).len(), 1);
    }

    #[test]
    fn buckets_are_cumulative_and_count_matches_inf() {
        let histogram = Histogram::new(BATCH_BUCKETS);
        for n in [1.0, 1.0, 3.0, 64.0, 65.0, 1000.0] {
            histogram.observe(n);
        }
        let mut out = Exposition::default();
        out.histogram("b", &[], &histogram);
        let samples = parse(&out.finish());
        let buckets: Vec<f64> = samples.iter().filter(|s| s.0 == "b_bucket").map(|s| s.2).collect();
        assert_eq!(buckets, [2.0, 2.0, 3.0, 3.0, 3.0, 3.0, 4.0, 6.0]);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]));
        let value = |name: &str| samples.iter().find(|s| s.0 == name).map(|s| s.2);
        assert_eq!(value("b_count"), Some(6.0));
        assert_eq!(value("b_sum"), Some(1134.0));
    }

    #[test]
    fn the_whole_registry_parses_and_bounds_its_labels() {
        let metrics = Metrics::default();
        metrics.request("/core/1.0/cluster/{name}", &Method::DELETE, StatusCode::OK, Duration::from_millis(3));
        metrics.request(
            UNMATCHED,
            &Method::from_bytes(b"BREW").unwrap_or(Method::GET),
            StatusCode::NOT_FOUND,
            Duration::ZERO,
        );
        metrics.record::<()>(&Err(dqlite::Error::Server { code: 5, message: "database is locked".into() }));
        metrics.record::<()>(&Err(dqlite::Error::EmptyStatement));
        metrics.dial_failed(DIAL_RAFT);
        metrics.write_batch_size.observe(3.0);
        metrics.heartbeat_round().succeeded();
        drop(metrics.heartbeat_round());
        let mut out = Exposition::default();
        metrics.render(&mut out);
        let text = out.finish();
        let samples = parse(&text);
        let value = |name: &str, labels: &str| {
            samples
                .iter()
                .find(|s| s.0 == name && s.1 == labels)
                .map(|s| s.2)
                .unwrap_or_else(|| panic!("{name}{{{labels}}} in\n{text}"))
        };
        assert_eq!(
            value(
                "microcluster_http_request_duration_seconds_count",
                "route=\"/core/1.0/cluster/{name}\",method=\"DELETE\",code=\"200\""
            ),
            1.0
        );
        assert_eq!(
            value(
                "microcluster_http_request_duration_seconds_count",
                "route=\"unmatched\",method=\"other\",code=\"404\""
            ),
            1.0
        );
        assert_eq!(value("microcluster_dqlite_errors_total", "kind=\"busy\""), 1.0);
        assert_eq!(value("microcluster_dqlite_errors_total", "kind=\"other\""), 0.0);
        assert_eq!(value("microcluster_dqlite_dial_errors_total", "path=\"raft\""), 1.0);
        assert_eq!(value("microcluster_write_batch_size_count", ""), 1.0);
        assert_eq!(value("microcluster_heartbeat_rounds_total", ""), 2.0);
        assert_eq!(value("microcluster_heartbeat_rounds_failed_total", ""), 1.0);
        // Every family is announced once, before its samples.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut unique = types.clone();
        unique.dedup();
        assert_eq!(types.len(), unique.len());
    }

    #[test]
    fn families_stop_growing_at_their_limit() {
        let family: Family<Counter> = Family::new(&["path"], Counter::default);
        for i in 0..MAX_SERIES + 10 {
            family.with(&[&format!("/p{i}")]).inc();
        }
        let series = family.snapshot();
        assert_eq!(series.len(), MAX_SERIES + 1);
        let overflow = series.iter().find(|(labels, _)| labels[0].1 == OVERFLOW).map(|(_, c)| c.get());
        assert_eq!(overflow, Some(10));
    }
}
