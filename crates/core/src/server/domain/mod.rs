//! What a member does, in terms of the cluster and its database, with no HTTP in it: how
//! members come and go, heartbeats and roles, quorum recovery, the doctor, backups,
//! monitoring credentials. Fails
//! with [`crate::server::error::Error`]; the REST layer turns that into statuses.

pub(crate) mod backup;
pub(crate) mod certificates;
pub(crate) mod doctor;
pub(crate) mod heartbeat;
pub(crate) mod membership;
pub(crate) mod monitors;
pub(crate) mod recovery;
pub(crate) mod roles;
pub(crate) mod rotation;
