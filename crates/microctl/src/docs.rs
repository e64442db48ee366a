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
    Ok(count(&cmd.disable_help_subcommand(true)))
}

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
    }
}
