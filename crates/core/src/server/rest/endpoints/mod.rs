//! The core API's endpoints, one resource group per file.

mod backup;
mod certificates;
mod cluster;
mod control;
mod daemon;
mod doctor;
mod dqlite_tunnel;
mod internal;
mod metrics;
mod monitors;
mod recovery;
mod sql;
mod status;

use crate::server::rest::Resources;

/// Endpoints served only on the control socket.
pub(crate) fn control() -> Resources {
    Resources::new("", [control::endpoints(), monitors::control()].concat())
}

/// Endpoints served on the control socket and the member's HTTPS address.
pub(crate) fn shared() -> Vec<Resources> {
    let endpoints = [
        status::endpoints(),
        cluster::endpoints(),
        daemon::endpoints(),
        metrics::endpoints(),
        backup::endpoints(),
        doctor::endpoints(),
        internal::endpoints(),
        dqlite_tunnel::endpoints(),
        sql::endpoints(),
        recovery::endpoints(),
        monitors::internal(),
        certificates::endpoints(),
    ];
    // Every path is whole (`api::paths`), so the group needs no prefix of its own.
    vec![Resources::new("", endpoints.concat())]
}

#[cfg(test)]
mod tests {
    use crate::api::paths;

    /// The server serves exactly the routes of `api::paths`, each once, which the client
    /// fills in: neither side can name a route the other lacks.
    #[test]
    fn the_server_serves_every_route_of_the_api_paths_and_no_other() {
        let mut served: Vec<String> = std::iter::once(super::control())
            .chain(super::shared())
            .flat_map(|res| res.endpoints.into_iter().map(|e| e.path))
            .collect();
        served.sort();
        let mut described: Vec<String> = paths::ALL.iter().map(|p| (*p).to_owned()).collect();
        described.sort();
        assert_eq!(served, described);
    }
}
