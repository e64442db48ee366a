//! Certificates over time: how many days each has left, judged the same way by `cluster list`,
//! `doctor`, the metrics and the log, which warns from [`WARN_DAYS`] before an expiry.

use std::time::{Duration, SystemTime};

use crate::server::state::State;
use crate::server::stop::ShutdownSignal;

/// From how many days before its expiry a certificate is warned about.
pub(crate) const WARN_DAYS: i64 = 30;

/// How often a member looks at its own certificates.
const LOOK_EVERY: Duration = Duration::from_secs(6 * 3600);

/// What a certificate's days left come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    Fine,
    /// Within [`WARN_DAYS`]: replace it.
    Soon(i64),
    Expired,
}

/// Judges `days_left`.
pub(crate) fn judge(days_left: i64) -> Expiry {
    match days_left {
        d if d < 0 => Expiry::Expired,
        d if d < WARN_DAYS => Expiry::Soon(d),
        _ => Expiry::Fine,
    }
}

/// What to say of a certificate (`what`: e.g. "m2's certificate") whose days left are
/// `days_left`; `None` when there is nothing to say.
pub(crate) fn warning(what: &str, days_left: i64) -> Option<String> {
    match judge(days_left) {
        Expiry::Fine => None,
        Expiry::Soon(days) => Some(format!(
            "{what} expires in {days} days: replace it before then (microctl cluster certificates rotate)"
        )),
        Expiry::Expired => Some(format!("{what} has expired: replace it (microctl cluster certificates rotate)")),
    }
}

/// This member's own certificates: (what, PEM) for its server certificate and, once
/// initialised, the cluster's.
pub(crate) fn own(state: &State) -> Vec<(&'static str, String)> {
    let mut certificates = vec![("this member's certificate", state.server_cert().cert_pem)];
    if let Ok(cluster) = state.cluster_cert() {
        certificates.push(("the cluster certificate", cluster.cert_pem));
    }
    certificates
}

/// Warns in the log, at start and then every few hours, of this member's certificates that
/// expire within [`WARN_DAYS`] or have expired.
pub(crate) async fn watch(state: State, mut stop: ShutdownSignal) {
    loop {
        for (what, pem) in own(&state) {
            match crate::tls::days_left_pem(&pem, SystemTime::now()) {
                Ok(days) => {
                    if let Some(warning) = warning(what, days) {
                        tracing::warn!(days_left = days, "{warning}");
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot read when {what} expires"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(LOOK_EVERY) => {}
            () = stop.fired() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_left_are_judged_from_thirty_days_before_an_expiry() {
        let cases = [
            (3650, Expiry::Fine),
            (30, Expiry::Fine),
            (29, Expiry::Soon(29)),
            (0, Expiry::Soon(0)),
            (-1, Expiry::Expired),
        ];
        for (days, want) in cases {
            assert_eq!(judge(days), want, "{days} days");
        }
        assert_eq!(warning("m2's certificate", 31), None);
        assert_eq!(
            warning("m2's certificate", 12).as_deref(),
            Some("m2's certificate expires in 12 days: replace it before then (microctl cluster certificates rotate)")
        );
        assert!(warning("the cluster certificate", -3).is_some_and(|w| w.contains("has expired")));
    }
}
