//! Node ids. A node bootstraps a new cluster on first start only if its id is the bootstrap id,
//! so every other node needs an id that is unique in practice.

use std::ffi::CString;

use crate::ffi;

/// The id go-dqlite and microcluster give the first node of a cluster (raft's digest of "1"
/// and 0). libdqlite 1.11 bootstraps a node with this id (or 1) when its data dir is empty.
pub const BOOTSTRAP_ID: u64 = 0x2dc1_7185_8c31_55be;

/// A fresh id for a node joining at `address`: libdqlite's digest of the address and the
/// current time. Never returns 0, 1 or [`BOOTSTRAP_ID`], which would mean "bootstrap".
pub fn generate_id(address: &str) -> u64 {
    // An interior NUL cannot reach C; the digest only needs to be unique, so drop it.
    let address = CString::new(address.replace('\0', "")).unwrap_or_default();
    loop {
        let id = ffi::generate_node_id(&address);
        if id > 1 && id != BOOTSTRAP_ID {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_differ_and_never_bootstrap() {
        let a = generate_id("127.0.0.1:9001");
        std::thread::sleep(std::time::Duration::from_micros(5));
        let b = generate_id("127.0.0.1:9001");
        assert_ne!(a, b);
        for id in [a, b, generate_id("a\0b")] {
            assert!(id > 1 && id != BOOTSTRAP_ID);
        }
    }
}
