//! `microctl cluster recover`: plans a quorum-loss recovery on a stopped member. Shows the last
//! raft configuration with each member's log position, lets the operator choose the survivors
//! (or takes this member and every member that answered, with `--yes`), and writes the plan the
//! daemon applies when it starts.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, bail};
use microcluster::recovery_planning::{self as recovery, MemberState, Survey};

use crate::format;

/// Plans the recovery; returns what to print.
pub(crate) async fn run(dir: &Path, yes: bool, survivors: Vec<String>) -> anyhow::Result<String> {
    let survey = recovery::survey(dir).await.context("surveying the members")?;
    let table = members_table(&survey);
    let interactive = !yes && survivors.is_empty() && std::io::stdin().is_terminal();
    let chosen = if !survivors.is_empty() {
        survivors
    } else if yes {
        survey.default_survivors()
    } else if interactive {
        eprint!("{table}");
        ask_survivors(&survey)?
    } else {
        bail!(
            "choose the survivors: --yes keeps {} (this member and every member that answered), or name each with --survivor NAME\n{table}",
            survey.default_survivors().join(", ")
        );
    };
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let plan = recovery::plan(&survey, &chosen, recovery::new_plan_id(), created)?;
    if interactive {
        let kept: Vec<String> = plan.members.iter().map(|m| format!("{} ({})", m.name, m.role)).collect();
        let question = format!(
            "Force the raft configuration to {} and drop {}? [y/N] ",
            kept.join(", "),
            if plan.removed.is_empty() { "nobody".to_owned() } else { plan.removed.join(", ") }
        );
        if !confirm(&question)? {
            bail!("recovery not planned: nothing was changed");
        }
    }
    recovery::write_plan(dir, &plan)?;
    let others: Vec<&str> = plan.members.iter().filter(|m| m.name != survey.name).map(|m| m.name.as_str()).collect();
    let mut out = if interactive { String::new() } else { table };
    out.push_str(&format!(
        "Recovery {} planned in {}: survivors {}; dropped {}.\n",
        plan.id,
        dir.join(recovery::PLAN_FILE).display(),
        plan.members.iter().map(|m| format!("{} ({})", m.name, m.role)).collect::<Vec<_>>().join(", "),
        if plan.removed.is_empty() { "none".to_owned() } else { plan.removed.join(", ") },
    ));
    out.push_str(&format!(
        "Next: start microd on {} (e.g. `systemctl start microd`). It forces the new configuration{}, \
         and removes the dropped members once the database is up. Its old database is kept in \
         {}/database.before-recovery-{}.\n",
        survey.name,
        if others.is_empty() {
            String::new()
        } else {
            format!(" and hands it to {} (keep their microd running)", others.join(", "))
        },
        dir.display(),
        plan.id
    ));
    Ok(out)
}

fn members_table(survey: &Survey) -> String {
    let header = ["NAME", "ADDRESS", "ROLE", "LAST ENTRY", "STATE"].map(String::from).to_vec();
    let rows: Vec<Vec<String>> = survey
        .members
        .iter()
        .map(|m| {
            let log = m.log.map_or_else(|| "unknown".to_owned(), |(term, index)| format!("term {term}, index {index}"));
            let state = match &m.state {
                MemberState::This => "this member (stopped)".to_owned(),
                MemberState::Running { leader } if leader.is_empty() => "running, no leader".to_owned(),
                MemberState::Running { leader } => format!("running, follows {leader}"),
                MemberState::Unreachable(why) => format!("unreachable: {why:.60}"),
            };
            vec![m.name.clone(), m.address.clone(), m.role.to_owned(), log, state]
        })
        .collect();
    format::table(&header, &rows)
}

fn ask_survivors(survey: &Survey) -> anyhow::Result<Vec<String>> {
    let default = survey.default_survivors();
    eprint!("Survivors, separated by commas [{}]: ", default.join(","));
    let line = read_line()?;
    let names: Vec<String> = line.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    Ok(if names.is_empty() { default } else { names })
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    eprint!("{question}");
    Ok(matches!(read_line()?.trim(), "y" | "Y" | "yes"))
}

fn read_line() -> anyhow::Result<String> {
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the answer")?;
    Ok(line)
}
