//! Which libdqlite this process runs, and which of this crate's tunings it takes.
//!
//! Two kinds of tuning exist. libdqlite 1.11 has no setter for its checkpoint threshold, raft's
//! heartbeat apart from the election timeout, or raft's segment size; this crate reaches them
//! in its private structures, only on 1.11 and only after checking their layout field by field
//! (see [`crate::NodeBuilder::checkpoint_threshold`]). Newer libraries get nothing of the kind:
//! only what their public API offers. One build runs on either (Debian 12's 1.11 and Debian
//! 13's 1.18 share the soname), so the choice is made at run time.

use std::fmt;

/// The libdqlite loaded in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Library {
    number: i32,
}

/// The library this process runs.
pub fn library() -> Library {
    Library { number: crate::ffi::version_number() }
}

impl Library {
    /// `major * 10000 + minor * 100 + release`, as the library reports it (1.11.1 reports
    /// 11000 and 1.18.1 reports 11800: neither bumped its header for the release).
    pub fn number(&self) -> i32 {
        self.number
    }

    /// `major.minor`, e.g. `1.18`. 1.11.x reports 1.10.0, and the build requires 1.11 or
    /// later, so that number is shown as `1.11`.
    pub fn version(&self) -> String {
        if self.number == 11_000 {
            return "1.11".to_owned();
        }
        format!("{}.{}", self.number / 10_000, self.number / 100 % 100)
    }

    /// Whether this is libdqlite 1.11, whose private structures this crate knows: only then do
    /// the checkpoint threshold, heartbeat interval and segment size settings apply (and only
    /// once their layout checks pass on the node).
    pub fn takes_private_tuning(&self) -> bool {
        is_private_layout(self.number)
    }
}

impl fmt::Display for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "libdqlite {}", self.version())
    }
}

/// 1.11.x reports 1.10.0 (its header was not bumped); 1.10 and 1.11 share the layout.
pub(crate) fn is_private_layout(number: i32) -> bool {
    (11_000..11_200).contains(&number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_1_10_and_1_11_take_the_private_tuning() {
        for (number, private, version) in [
            (11_000, true, "1.11"),
            (11_100, true, "1.11"),
            (11_200, false, "1.12"),
            (11_600, false, "1.16"),
            (11_800, false, "1.18"),
            (10_900, false, "1.9"),
        ] {
            assert_eq!(is_private_layout(number), private, "{number}");
            assert_eq!(Library { number }.version(), version);
        }
    }
}
