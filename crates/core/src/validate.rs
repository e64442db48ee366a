//! Checks on names and addresses that come from users or peers, done before they reach a file
//! name, a certificate, the database or a socket.

use std::net::SocketAddr;

/// An invalid member name or address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    /// A member name that is not a valid host name.
    #[error("invalid member name {name:?}: {reason}")]
    Name {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// An address that is not `ip:port`.
    #[error("invalid address {address:?}: {reason}")]
    Address {
        /// The address.
        address: String,
        /// Why.
        reason: &'static str,
    },
}

/// A member name: a host name (dot-separated labels of letters, digits and `-`, none starting
/// or ending with `-`, 1–63 characters each, 253 in all). It becomes a file name and a
/// certificate name, so nothing else is allowed.
pub fn member_name(name: &str) -> Result<(), InvalidInput> {
    let bad = |reason| Err(InvalidInput::Name { name: name.to_owned(), reason });
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 253 {
        return bad("it is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("it has an empty label (leading, trailing or double dot)");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return bad("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with '-'");
        }
    }
    Ok(())
}

/// A member address: `ip:port` with a non-zero port (`[v6]:port` for IPv6), in canonical form
/// (the string is the member's identity in dqlite, so `127.0.0.1:09001` would be a different
/// member from `127.0.0.1:9001`). Returns the parsed address.
pub fn member_address(address: &str) -> Result<SocketAddr, InvalidInput> {
    let bad = |reason| InvalidInput::Address { address: address.to_owned(), reason };
    let parsed: SocketAddr = address.parse().map_err(|_| bad("expected ip:port, e.g. 10.0.0.1:9001"))?;
    if parsed.port() == 0 {
        return Err(bad("the port must not be 0"));
    }
    if parsed.ip().is_unspecified() {
        return Err(bad("a member needs an address others can reach, not 0.0.0.0 or ::"));
    }
    if parsed.to_string() != address {
        return Err(bad("not in canonical form; write it as the address would print"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["mc1", "node-1.example.com", "a", "A1"] {
            assert!(member_name(ok).is_ok(), "{ok}");
        }
        for bad in
            ["", "..", "../etc", "a/b", "a\\b", "-a", "a-", "a..b", ".a", "a.", "a b", "ä", "a_b", &"x".repeat(64)]
        {
            assert!(member_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        assert!(member_address("127.0.0.1:9001").is_ok());
        assert!(member_address("[::1]:9001").is_ok());
        for bad in ["127.0.0.1", "localhost:9001", "127.0.0.1:0", "0.0.0.0:9001", "127.0.0.1:09001", "[::1]:x", ""] {
            assert!(member_address(bad).is_err(), "{bad}");
        }
    }
}
