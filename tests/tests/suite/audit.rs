//! Every change of trust is an audit line in the log (`target: audit`): what changed, and, from
//! the request's span, who asked (the control socket, or a certificate's fingerprint); the
//! line's time stamp says when.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use microcluster_tests::{Cluster, wait_until};

fn audit_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("audit")).collect()
}

#[test]
fn changes_of_trust_are_audited_with_who_asked() {
    let cluster = Cluster::form(2);
    let m1 = &cluster.members[0];
    let joiner_fp = {
        let pem = std::fs::read_to_string(cluster.members[1].dir.join("server.crt")).unwrap();
        microcluster::tls::fingerprint_pem(&pem).unwrap()
    };
    // The admission: m1 trusts m2 when m2's join request (not yet trusted) asks.
    let log = m1.log();
    let trusted = audit_lines(&log)
        .into_iter()
        .find(|l| l.contains("trusts a member") && l.contains("m2") && !l.contains("no longer"))
        .unwrap_or_else(|| panic!("no audit line of m2's admission in:\n{log}"))
        .to_owned();
    assert!(trusted.contains(&joiner_fp), "the line names the certificate trusted: {trusted}");
    assert!(trusted.contains("caller=an untrusted certificate"), "{trusted}");

    // A monitoring credential, issued over the socket.
    let out = tempfile::tempdir().unwrap();
    m1.ctl_ok(&["monitoring", "add", "scraper", "--out", out.path().to_str().unwrap()]);
    m1.ctl_ok(&["monitoring", "revoke", "scraper"]);
    // The removal, asked over m1's control socket: every member left logs that it no longer
    // trusts m2, m1 as the control socket's doing.
    m1.ctl_ok(&["cluster", "remove", "m2"]);
    let log = wait_until("the removal's audit line", Duration::from_secs(10), || {
        let log = m1.log();
        audit_lines(&log).iter().any(|l| l.contains("no longer trusts a member") && l.contains("m2")).then_some(log)
    });
    let lines = audit_lines(&log);
    let removed = lines.iter().find(|l| l.contains("no longer trusts a member") && l.contains("m2")).unwrap();
    assert!(removed.contains("caller=the control socket"), "{removed}");
    for what in ["issued a monitoring credential", "revoked a monitoring credential"] {
        let line = lines.iter().find(|l| l.contains(what)).unwrap_or_else(|| panic!("no {what:?} in {lines:#?}"));
        assert!(line.contains("scraper") && line.contains("caller=the control socket"), "{line}");
    }
    // m2, reset, logs that it forgot the cluster, at its removal's request.
    let reset = wait_until("m2's reset", Duration::from_secs(10), || {
        let log = cluster.members[1].log();
        audit_lines(&log).iter().find(|l| l.contains("no longer trusts any member")).map(|l| (*l).to_owned())
    });
    assert!(reset.contains("members=2") && reset.contains("caller=member m1 (certificate"), "{reset}");
}
