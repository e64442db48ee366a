//! The cluster's time. Members' clocks disagree (a host without working NTP can be off by
//! days), and every time the database holds is compared with another member's clock later:
//! a token's expiry is stamped by the member that issues it and judged by whichever member
//! leads, a heartbeat is stamped by the leader and its age judged by whoever lists the members.
//! So no member stamps or judges with its own clock alone.
//!
//! The leader reads every member's clock in each heartbeat round: the member answers with its
//! time, which it read somewhere between the request's sending and the answer's arrival, so its
//! offset from the leader's clock is known to within half the round trip ([`Sample`]). The
//! cluster's time is the median of the members' clocks ([`offsets`]): a single skewed member,
//! the leader included, is outvoted. The leader sends every member's offset from it with the
//! next round, and each member then keeps the cluster's time as its own clock minus its offset
//! ([`Clock::now`]), carried forward between heartbeats by the monotonic clock. Until it has
//! learned its offset, a member uses its own clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::api::ClockOffset;

/// Beyond this, a member's clock is reported as skewed (in `cluster list`, `doctor`, the log).
///
/// The cluster's own decisions use the corrected time whatever the skew; the bound is for
/// what the corrected time cannot fix: the host's logs, the application's own timestamps and
/// certificates' validity, where a few seconds are noise but more than that misleads. It is
/// far above what NTP or chrony leave (milliseconds), and above the estimate's uncertainty
/// under load (half a round trip, at most 1 s with the heartbeat's 2 s deadline), which is
/// added to it before a skew is reported, so a slow answer is never taken for a wrong clock.
/// etcd warns from 1 s, but its leases depend on clocks; ours do not.
pub(crate) const SKEW_BOUND: Duration = Duration::from_secs(5);

/// How often a skew that persists is logged again.
const WARN_EVERY: Duration = Duration::from_secs(600);

/// One member's clock as the leader read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    /// The member's clock minus the leader's, in nanoseconds.
    pub(crate) offset: i64,
    /// The true offset is within `offset` ± this (half the round trip), in nanoseconds.
    pub(crate) uncertainty: u64,
}

impl Sample {
    /// The leader's own clock.
    pub(crate) const LEADER: Sample = Sample { offset: 0, uncertainty: 0 };

    /// From when the leader sent its request (its clock), how long the answer took (the
    /// monotonic clock, so a step of the wall clock meanwhile does not count), and the time
    /// the member answered with.
    pub(crate) fn measure(sent: SystemTime, round_trip: Duration, member: SystemTime) -> Sample {
        let half = round_trip / 2;
        Sample { offset: signed_nanos(member, sent + half), uncertainty: nanos(half) }
    }
}

/// A member's clock minus the cluster's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Offset {
    /// In nanoseconds; positive: ahead.
    pub(crate) nanos: i64,
    /// The true offset is within `nanos` ± this.
    pub(crate) uncertainty: u64,
}

impl Offset {
    /// Beyond [`SKEW_BOUND`] even at the near end of its uncertainty.
    pub(crate) fn skewed(&self) -> bool {
        self.nanos.unsigned_abs() > nanos(SKEW_BOUND).saturating_add(self.uncertainty)
    }

    /// In seconds.
    pub(crate) fn seconds(&self) -> f64 {
        self.nanos as f64 / 1e9
    }

    /// E.g. "2days ahead of", "6.5 s behind", "within 0.003 s of".
    pub(crate) fn relation(&self) -> String {
        let size = Duration::from_nanos(self.nanos.unsigned_abs());
        let side = if self.nanos > 0 { "ahead of" } else { "behind" };
        if !self.skewed() {
            format!("within {:.3} s of", size.as_secs_f64())
        } else if size < Duration::from_secs(60) {
            format!("{:.1} s {side}", size.as_secs_f64())
        } else {
            let seconds = Duration::from_secs(size.as_secs_f64().round() as u64);
            format!("{} {side}", humantime::format_duration(seconds))
        }
    }

    /// What an operator reads about a skewed member `name`, with the fix.
    pub(crate) fn warning(&self, name: &str) -> String {
        format!(
            "{name}'s clock is {} the cluster's time (the median of the members' clocks), beyond the {} s bound: \
             fix time synchronisation on {name}'s host (NTP: `chronyc tracking` or `timedatectl \
             timesync-status` there); the cluster corrects its own times meanwhile",
            self.relation(),
            SKEW_BOUND.as_secs()
        )
    }
}

impl From<ClockOffset> for Offset {
    fn from(o: ClockOffset) -> Offset {
        Offset { nanos: o.offset_ns, uncertainty: o.uncertainty_ns }
    }
}

impl From<Offset> for ClockOffset {
    fn from(o: Offset) -> ClockOffset {
        ClockOffset { offset_ns: o.nanos, uncertainty_ns: o.uncertainty }
    }
}

/// Every sampled member's offset from the cluster's time: the median of the samples (the mean
/// of the middle two for an even count, so that two clocks that disagree are both reported
/// rather than one picked at random). `None` unless the samples are a majority of `members`:
/// a minority could be the skewed ones.
pub(crate) fn offsets(samples: &BTreeMap<String, Sample>, members: usize) -> Option<BTreeMap<String, Offset>> {
    if samples.is_empty() || samples.len() * 2 <= members {
        return None;
    }
    let mut sorted: Vec<Sample> = samples.values().copied().collect();
    sorted.sort_by_key(|s| s.offset);
    let n = sorted.len();
    let (low, high) = (sorted[(n - 1) / 2], sorted[n / 2]);
    let median = midpoint(low.offset, high.offset);
    let median_uncertainty = low.uncertainty.max(high.uncertainty);
    Some(
        samples
            .iter()
            .map(|(name, s)| {
                let offset = Offset {
                    nanos: s.offset.saturating_sub(median),
                    uncertainty: s.uncertainty.saturating_add(median_uncertainty),
                };
                (name.clone(), offset)
            })
            .collect(),
    )
}

fn midpoint(a: i64, b: i64) -> i64 {
    ((i128::from(a) + i128::from(b)) / 2) as i64
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `a - b` in nanoseconds.
fn signed_nanos(a: SystemTime, b: SystemTime) -> i64 {
    match a.duration_since(b) {
        Ok(ahead) => i64::try_from(ahead.as_nanos()).unwrap_or(i64::MAX),
        Err(behind) => i64::try_from(behind.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// `time - offset`.
fn minus(time: SystemTime, offset: i64) -> SystemTime {
    let size = Duration::from_nanos(offset.unsigned_abs());
    if offset >= 0 { time.checked_sub(size).unwrap_or(time) } else { time.checked_add(size).unwrap_or(time) }
}

/// A member's view of the cluster's time, and of every member's offset from it.
#[derive(Debug, Default)]
pub(crate) struct Clock(Mutex<Known>);

#[derive(Debug, Default)]
struct Known {
    /// The cluster's time when this member last learned its offset, and the monotonic clock
    /// then.
    anchor: Option<(SystemTime, Instant)>,
    /// Every member's offset, as last measured, and when this member learned them.
    offsets: BTreeMap<String, Offset>,
    learned: Option<Instant>,
    /// Members (by address) whose heartbeat answers carry their time: they accept the offsets
    /// in the next round's request, where older software refuses fields it does not know.
    readers: HashSet<String>,
    /// When each skewed member was last logged.
    warned: HashMap<String, Instant>,
}

impl Clock {
    /// The cluster's time by this member: its own clock minus its offset when it last learned
    /// it, moved on since by the monotonic clock, so that a step of the wall clock since (NTP
    /// being fixed, say) is not corrected twice; its own clock until it knows its offset.
    pub(crate) fn now(&self) -> SystemTime {
        match self.lock().anchor {
            Some((reference, at)) => reference + at.elapsed(),
            None => SystemTime::now(),
        }
    }

    /// This member's own clock minus [`Clock::now`], if it knows its offset.
    pub(crate) fn own_offset(&self) -> Option<i64> {
        let known = self.lock();
        known.anchor.map(|(reference, at)| signed_nanos(SystemTime::now(), reference + at.elapsed()))
    }

    /// Learns every member's offset (from this member's round as the leader, or from the
    /// leader's heartbeat), `me` being this member, and logs skews: about this member itself,
    /// and with `leading` about every member.
    pub(crate) fn learn(&self, me: &str, offsets: BTreeMap<String, Offset>, leading: bool) {
        let mut known = self.lock();
        if let Some(own) = offsets.get(me) {
            known.anchor = Some((minus(SystemTime::now(), own.nanos), Instant::now()));
        }
        for (name, offset) in &offsets {
            if name != me && !leading {
                continue;
            }
            let last = known.warned.get(name).copied();
            match (offset.skewed(), last) {
                (true, Some(at)) if at.elapsed() < WARN_EVERY => {}
                (true, _) => {
                    known.warned.insert(name.clone(), Instant::now());
                    let seconds = offset.seconds();
                    tracing::warn!(member = name, offset_seconds = seconds, "{}", offset.warning(name));
                }
                (false, Some(_)) => {
                    known.warned.remove(name);
                    tracing::info!(member = name, "{name}'s clock is back {} the cluster's time", offset.relation());
                }
                (false, None) => {}
            }
        }
        known.offsets = offsets;
        known.learned = Some(Instant::now());
    }

    /// Every member's offset, if learned within `max_age` (older ones may no longer hold).
    pub(crate) fn offsets(&self, max_age: Duration) -> BTreeMap<String, Offset> {
        let known = self.lock();
        match known.learned {
            Some(at) if at.elapsed() <= max_age => known.offsets.clone(),
            _ => BTreeMap::new(),
        }
    }

    /// Records whether the member at `address` answered a heartbeat with its time.
    pub(crate) fn set_reader(&self, address: &str, reads: bool) {
        let mut known = self.lock();
        if reads {
            known.readers.insert(address.to_owned());
        } else {
            known.readers.remove(address);
        }
    }

    /// Whether the member at `address` accepts offsets in a heartbeat.
    pub(crate) fn is_reader(&self, address: &str) -> bool {
        self.lock().readers.contains(address)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// RFC 3339 with nanoseconds, as the database and the API hold times.
pub(crate) fn format(time: SystemTime) -> String {
    humantime::format_rfc3339_nanos(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    /// (samples: name, offset from the leader in s, uncertainty in ms; members;
    ///  expected: name, offset from the cluster in s, skewed), or `None` expected.
    type Case =
        (&'static str, &'static [(&'static str, i64, u64)], usize, Option<&'static [(&'static str, i64, bool)]>);

    const DAY: i64 = 24 * 3600;

    const CASES: &[Case] = &[
        ("one member is its own reference", &[("m1", 0, 0)], 1, Some(&[("m1", 0, false)])),
        (
            "a follower ahead is outvoted",
            &[("m1", 0, 0), ("m2", 0, 1), ("m3", 2 * DAY, 1)],
            3,
            Some(&[("m1", 0, false), ("m2", 0, false), ("m3", 2 * DAY, true)]),
        ),
        (
            "a leader ahead is outvoted too",
            &[("m3", 0, 0), ("m1", -2 * DAY, 1), ("m2", -2 * DAY, 1)],
            3,
            Some(&[("m1", 0, false), ("m2", 0, false), ("m3", 2 * DAY, true)]),
        ),
        (
            "a member behind",
            &[("m1", 0, 0), ("m2", 1, 1), ("m3", -3600, 1), ("m4", 0, 1), ("m5", 2, 1)],
            5,
            Some(&[("m1", 0, false), ("m2", 1, false), ("m3", -3600, true), ("m4", 0, false), ("m5", 2, false)]),
        ),
        (
            "two that disagree are both half off: neither is picked",
            &[("m1", 0, 0), ("m2", 20, 1)],
            2,
            Some(&[("m1", -10, true), ("m2", 10, true)]),
        ),
        (
            "an even majority takes the middle two's mean",
            &[("m1", 0, 0), ("m2", 0, 1), ("m3", 0, 1), ("m4", 600, 1)],
            5,
            Some(&[("m1", 0, false), ("m2", 0, false), ("m3", 0, false), ("m4", 600, true)]),
        ),
        ("a minority cannot tell whose clock is off", &[("m3", 0, 0), ("m1", -2 * DAY, 1)], 5, None),
        (
            "6 s off but with 1.5 s uncertainty is not reported",
            &[("m1", 0, 0), ("m2", 0, 500), ("m3", 6, 1000)],
            3,
            Some(&[("m1", 0, false), ("m2", 0, false), ("m3", 6, false)]),
        ),
        ("nobody answered", &[], 3, None),
    ];

    #[test]
    fn offsets_from_the_median() {
        for (what, samples, members, expected) in CASES {
            let samples: BTreeMap<String, Sample> = samples
                .iter()
                .map(|(n, o, u)| ((*n).to_owned(), Sample { offset: o * S, uncertainty: u * MS }))
                .collect();
            let got = offsets(&samples, *members);
            let got: Option<Vec<(&str, i64, bool)>> =
                got.as_ref().map(|g| g.iter().map(|(n, o)| (n.as_str(), o.nanos / S, o.skewed())).collect());
            assert_eq!(got.as_deref(), *expected, "{what}");
        }
    }

    #[test]
    fn a_sample_is_centred_on_the_round_trip() {
        let sent = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let rtt = Duration::from_millis(10);
        // The member read its clock 5 ms after the leader sent, and is 2 s ahead.
        let answer = sent + Duration::from_millis(5) + Duration::from_secs(2);
        assert_eq!(Sample::measure(sent, rtt, answer), Sample { offset: 2 * S, uncertainty: 5 * MS });
        let behind = sent - Duration::from_secs(3600);
        assert_eq!(Sample::measure(sent, rtt, behind).offset, -3600 * S - 5 * MS as i64);
    }

    #[test]
    fn the_clusters_time_follows_the_learned_offset() {
        let clock = Clock::default();
        let own = SystemTime::now();
        assert!(signed_nanos(clock.now(), own).abs() < S, "its own clock before it knows better");
        assert_eq!(clock.own_offset(), None);
        let offsets = BTreeMap::from([
            ("m1".to_owned(), Offset { nanos: 2 * DAY * S, uncertainty: MS }),
            ("m2".to_owned(), Offset::default()),
        ]);
        clock.learn("m1", offsets.clone(), false);
        let behind = signed_nanos(SystemTime::now(), clock.now());
        assert!((behind - 2 * DAY * S).abs() < S, "{behind}");
        assert!(clock.own_offset().is_some_and(|o| (o - 2 * DAY * S).abs() < S));
        assert_eq!(clock.offsets(Duration::from_secs(60)), offsets);
        assert_eq!(clock.offsets(Duration::ZERO), BTreeMap::new(), "stale offsets are not reported");
        // Learned without this member's own offset: its time stays as it was.
        clock.learn("m3", BTreeMap::new(), false);
        assert!((signed_nanos(SystemTime::now(), clock.now()) - 2 * DAY * S).abs() < S);
    }

    #[test]
    fn relations_read_well() {
        let offset = |s: i64, u: u64| Offset { nanos: s * S, uncertainty: u * MS };
        assert_eq!(offset(2 * DAY, 1).relation(), "2days ahead of");
        assert_eq!(Offset { nanos: 2 * DAY * S - 3_000_000, uncertainty: 0 }.relation(), "2days ahead of");
        assert_eq!(offset(-7, 1).relation(), "7.0 s behind");
        assert_eq!(Offset { nanos: 3_000_000, uncertainty: 0 }.relation(), "within 0.003 s of");
        assert!(offset(2 * DAY, 1).warning("m3").contains("m3's clock is 2days ahead of the cluster's time"));
    }
}
