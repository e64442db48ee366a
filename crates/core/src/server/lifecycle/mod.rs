//! The daemon's life: start-up checks, start, resume after a restart or a recovery plan, and
//! shutdown, in that order and bounded in time. The one layer that starts and stops the
//! others.

pub(crate) mod app;
pub(crate) mod member;
pub(crate) mod startup;
