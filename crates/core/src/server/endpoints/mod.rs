//! The core API's endpoints, one resource group per file.

mod backup;
mod cluster;
mod control;
mod daemon;
mod database;
mod doctor;
mod internal;
mod metrics;
mod recovery;
mod sql;
mod status;

use super::rest::Resources;

/// Endpoints served only on the control socket.
pub(crate) fn control() -> Resources {
    Resources::new("core/control", control::endpoints())
}

/// Endpoints served on the control socket and the member's HTTPS address.
pub(crate) fn shared() -> Vec<Resources> {
    vec![
        Resources::new(
            "core/1.0",
            [
                status::endpoints(),
                cluster::endpoints(),
                daemon::endpoints(),
                metrics::endpoints(),
                backup::endpoints(),
                doctor::endpoints(),
            ]
            .concat(),
        ),
        Resources::new(
            "core/internal",
            [internal::endpoints(), database::endpoints(), sql::endpoints(), recovery::endpoints()].concat(),
        ),
    ]
}
