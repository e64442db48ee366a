//! `microctl doctor`: asks the leader (through this member) to compare dqlite's configuration,
//! the member table and every trust store, prints each result and a summary line, and fails
//! (exit 1) while any problem is left unresolved.

use anyhow::Context;
use microcluster::api::DoctorReport;
use microcluster::client::Client;
use serde_json::json;

use crate::exit::{Code, Reported};
use crate::format::{Format, Listing};

/// Runs the doctor; `repair` false only reports (`--check`).
pub(crate) async fn run(client: &Client, repair: bool, format: Format) -> anyhow::Result<()> {
    let what = if repair { "running the doctor" } else { "running the doctor's checks" };
    let report = client.doctor(repair).await.context(what)?;
    let listing = listing(&report);
    // The summary follows a table (bordered or compact); other formats stay parseable, so it
    // goes to stderr there.
    if matches!(format, Format::Table | Format::Compact) {
        crate::emit(&format!("{}{}\n", listing.render(format), summary(&report)))?;
    } else {
        crate::emit(&listing.render(format))?;
        eprintln!("{}", summary(&report));
    }
    if report.problems > 0 {
        return Err(Reported(Code::Failed).into());
    }
    Ok(())
}

/// The results: CHECK, MEMBER, STATUS, DETAIL; JSON is the whole report.
fn listing(report: &DoctorReport) -> Listing {
    let header = ["CHECK", "MEMBER", "STATUS", "DETAIL"].map(String::from).to_vec();
    let cells = report
        .checks
        .iter()
        .map(|c| vec![c.check.clone(), c.member.clone(), c.status.clone(), c.detail.clone()])
        .collect();
    let records =
        report.checks.iter().map(|c| vec![json!(c.check), json!(c.member), json!(c.status), json!(c.detail)]).collect();
    Listing { header, cells, keys: vec!["check", "member", "status", "detail"], records, json: json!(report) }
}

/// "N problems, M repaired", with what was skipped and whether anything could change.
fn summary(report: &DoctorReport) -> String {
    let mut line = format!("{} problems, {} repaired", report.problems, report.repaired);
    if report.skipped > 0 {
        line.push_str(&format!(", {} skipped", report.skipped));
    }
    if !report.repair {
        line.push_str(" (--check: nothing was changed)");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use microcluster::api::DoctorCheck;

    fn report() -> DoctorReport {
        let check = |check: &str, member: &str, status: &str, detail: &str| DoctorCheck {
            check: check.into(),
            member: member.into(),
            status: status.into(),
            detail: detail.into(),
        };
        DoctorReport {
            leader: "m1".into(),
            repair: false,
            checks: vec![
                check("role", "m3", "PROBLEM", "the database says spare, dqlite says voter"),
                check("unique", "-", "OK", "3 node ids"),
            ],
            problems: 1,
            repaired: 0,
            skipped: 2,
        }
    }

    #[test]
    fn a_table_of_results_then_the_summary() {
        let report = report();
        assert_eq!(
            listing(&report).render(Format::Table),
            "+--------+--------+---------+--------------------------------------------+\n\
             | CHECK  | MEMBER | STATUS  |                   DETAIL                   |\n\
             +--------+--------+---------+--------------------------------------------+\n\
             | role   | m3     | PROBLEM | the database says spare, dqlite says voter |\n\
             | unique | -      | OK      | 3 node ids                                 |\n\
             +--------+--------+---------+--------------------------------------------+\n"
        );
        assert_eq!(summary(&report), "1 problems, 0 repaired, 2 skipped (--check: nothing was changed)");
        let clean = DoctorReport { repair: true, problems: 0, skipped: 0, repaired: 3, ..report };
        assert_eq!(summary(&clean), "0 problems, 3 repaired");
    }

    #[test]
    fn records_and_json() {
        let report = report();
        let listing = listing(&report);
        assert!(listing.render(Format::Csv).starts_with("check,member,status,detail\nrole,m3,PROBLEM,\"the database"));
        let back: DoctorReport = serde_json::from_str(&listing.render(Format::Json)).unwrap();
        assert_eq!(back, report);
    }
}
