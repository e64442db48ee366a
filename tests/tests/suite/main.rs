//! The end-to-end suite, one test binary: each module starts real `microd` processes on
//! loopback addresses of their own, in temporary state directories, and stops them. Run one
//! module with a filter: `cargo test -p microcluster-tests --test suite -- faults::`.

mod audit;
mod backup;
mod bad_input;
mod cli;
mod cli_cluster_list;
mod clocks;
mod doctor;
mod embedding;
mod faults;
mod frozen_leader;
mod full_disk;
mod fuzz_regressions;
mod guide;
mod health;
mod hooks;
mod install;
mod interrupted_joins;
mod invariants;
mod joins;
mod library;
mod limits;
mod membership;
mod memory;
mod metrics;
mod monitoring;
mod notes;
mod operator;
mod partition;
mod power_loss;
mod recover;
mod rotation;
mod set_address;
mod state_files;
mod tls;
mod tutorial;
mod writes;
