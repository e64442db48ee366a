//! `make run`: a ready three-member cluster on 127.0.0.1:9001-9003, state under `./run/`.
//! Prints the member list and commands to try, then stops every member on Ctrl-C (or when
//! stdin closes).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::path::PathBuf;

use microcluster_tests::Member;

fn main() {
    let root = std::env::current_dir().unwrap().join("run");
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    let mut members: Vec<Member> = (1..=3)
        .map(|i| Member::at(&format!("mc{i}"), &format!("127.0.0.1:900{i}"), &root.join(format!("mc{i}"))))
        .collect();
    for member in &mut members {
        member.args = vec!["--debug".into(), "--heartbeat".into(), "2s".into()];
        member.start();
    }
    members[0].bootstrap();
    for i in 1..3 {
        let token = members[0].ctl_ok(&["tokens", "add", &members[i].name]);
        members[i].ctl_ok(&["init", &members[i].name, &members[i].address, "--token", token.trim()]);
    }
    print!("{}", members[0].ctl_ok(&["cluster", "list"]));
    let microctl = PathBuf::from(&microcluster_tests::binaries().microctl);
    let ctl = format!("{} --state-dir {}", microctl.display(), root.join("mc1").display());
    println!(
        "\nA 3-member cluster is running (state and logs under {}). Try:\n\n  \
         {ctl} cluster list\n  \
         {ctl} sql \"SELECT name, address, role FROM core_cluster_members\"\n  \
         {ctl} sql \"INSERT INTO extended_table (key, value) VALUES ('k', 'v')\"\n  \
         {ctl} tokens add mc4\n  \
         {} --state-dir {} extended 127.0.0.1:9001\n\n\
         Press Ctrl-C (or Ctrl-D) to stop every member.",
        root.display(),
        microctl.display(),
        root.join("mc2").display()
    );
    // Ctrl-C reaches the whole process group: the members get SIGINT and stop cleanly too.
    // Waiting on stdin also returns when the terminal goes away.
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        line.clear();
    }
    for member in &mut members {
        member.signal("TERM");
    }
    for member in &mut members {
        member.wait_exit(std::time::Duration::from_secs(15));
    }
    println!("stopped");
}
