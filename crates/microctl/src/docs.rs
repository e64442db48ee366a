//! `microctl completion SHELL` and `microctl manpages DIR`: shell completions and man pages
//! generated from the clap definition, so they never drift from the real command line.
//! `make install` runs both.

use std::path::Path;

use anyhow::Context;
use clap_complete::Shell;

/// The completion script for `shell`.
pub(crate) fn completion(mut cmd: clap::Command, shell: Shell) -> String {
    let mut script = Vec::new();
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

/// Writes `NAME.1` and one page per subcommand (`NAME-cluster-list.1`, ...) into `dir`, creating
/// it; returns how many pages were written.
pub(crate) fn manpages(cmd: clap::Command, dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(cmd.clone(), dir).with_context(|| format!("writing man pages into {}", dir.display()))?;
    let main = dir.join(format!("{}.1", cmd.get_name()));
    let mut page = std::fs::read_to_string(&main).with_context(|| format!("reading {}", main.display()))?;
    page.push_str(MAIN_PAGE_SECTIONS);
    std::fs::write(&main, page).with_context(|| format!("writing {}", main.display()))?;
    Ok(count(&cmd.disable_help_subcommand(true)))
}

/// What clap does not know, appended to the main page (roff).
const MAIN_PAGE_SECTIONS: &str = r#".SH ENVIRONMENT
.TP
\fBSTATE_DIR\fR
The member's state directory, as \fB\-\-state\-dir\fR (which wins).
.TP
\fBNO_COLOR\fR
Set to anything but the empty string: the \fB\-v\fR and \fB\-d\fR lines are not coloured.
.TP
\fBTERM\fR
\fBdumb\fR: no progress line (otherwise drawn on a terminal for waitready, backups, restores and checks).
.SH FILES
.TP
\fISTATE\fB/control.socket\fR
The daemon's control socket: every command but \fBcluster list ADDRESS\fR and \fB\-\-local\fR goes through it.
.TP
\fISTATE\fB/server.crt\fR, \fISTATE\fB/server.key\fR, \fISTATE\fB/cluster.crt\fR
The member's certificate and key, and the cluster certificate it pins, for \fBcluster list ADDRESS\fR.
.TP
\fISTATE\fB/database/\fR, \fISTATE\fB/truststore/\fR
Read by \fBcluster list \-\-local\fR and \fBcluster recover\fR, with the daemon stopped.
.TP
\fB/var/lib/microd\fR
The default state directory.
.SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
The request failed: the daemon answered with an error.
.TP
\fB2\fR
Usage error.
.TP
\fB3\fR
The daemon cannot be reached (no socket, connection refused, permission denied).
.TP
\fB4\fR
Timed out (\fBwaitready \-\-timeout\fR, or a request's deadline).
"#;

/// Pages `clap_mangen::generate_to` writes: the command and each visible subcommand, recursively.
fn count(cmd: &clap::Command) -> usize {
    1 + cmd.get_subcommands().filter(|s| !s.is_hide_set()).map(count).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("demo")
            .about("A demo")
            .subcommand(clap::Command::new("cluster").subcommand(clap::Command::new("list").about("List members")))
            .subcommand(clap::Command::new("shutdown"))
    }

    #[test]
    fn completions_name_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = completion(cli(), shell);
            assert!(script.contains("cluster") && script.contains("shutdown"), "{shell}: {script}");
        }
    }

    #[test]
    fn one_man_page_per_command() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("man/man1");
        assert_eq!(manpages(cli(), &dir).unwrap(), 4);
        let mut names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["demo-cluster-list.1", "demo-cluster.1", "demo-shutdown.1", "demo.1"]);
        let page = std::fs::read_to_string(dir.join("demo-cluster-list.1")).unwrap();
        assert!(page.contains(".TH demo-cluster-list 1"), "{page}");
        let main = std::fs::read_to_string(dir.join("demo.1")).unwrap();
        for section in [".SH ENVIRONMENT", ".SH FILES", ".SH \"EXIT STATUS\""] {
            assert!(main.contains(section), "{section} missing from:\n{main}");
        }
    }
}
