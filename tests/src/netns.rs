//! Test hosts in network namespaces: each member gets a namespace, a veth pair on a bridge in
//! the root namespace and an address of its own in a private /24, so tests can cut one member
//! off the network (and heal it) and prove that members on distinct hosts work. Needs root and
//! `ip netns`; everything made is removed on drop.

use std::process::Command;

/// Why network namespaces cannot be used here, if they cannot.
pub fn unavailable() -> Option<String> {
    let root = Command::new("id").arg("-u").output().ok().is_some_and(|o| o.stdout.starts_with(b"0"));
    if !root {
        return Some("network namespace tests need root".into());
    }
    let probe = format!("mcprobe{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(out) if out.status.success() => {
            let _ = Command::new("ip").args(["netns", "delete", &probe]).status();
            None
        }
        Ok(out) => Some(format!("`ip netns add` failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Err(err) => Some(format!("`ip` is not available: {err}")),
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A bridge and one namespace per host.
#[derive(Debug)]
pub struct Network {
    tag: String,
    bridge: String,
    /// Namespace names, one per host.
    pub namespaces: Vec<String>,
    /// Each host's IPv4 address.
    pub addresses: Vec<String>,
}

impl Network {
    /// `hosts` namespaces on a fresh bridge.
    pub fn new(hosts: usize) -> Result<Network, String> {
        let pid = std::process::id();
        let tag = format!("{}", pid % 100_000);
        let subnet = format!("10.213.{}", pid % 250);
        let mut net = Network { bridge: format!("mcbr{tag}"), tag, namespaces: Vec::new(), addresses: Vec::new() };
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for i in 0..hosts {
            let ns = format!("mc{}h{i}", net.tag);
            let (host_end, ns_end) = (format!("mcv{}h{i}", net.tag), format!("mcn{}h{i}", net.tag));
            ip(&["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &ns_end])?;
            ip(&["link", "set", &ns_end, "netns", &ns])?;
            ip(&["link", "set", &host_end, "master", &net.bridge])?;
            ip(&["link", "set", &host_end, "up"])?;
            let address = format!("{subnet}.{}", i + 1);
            ip(&["netns", "exec", &ns, "ip", "addr", "add", &format!("{address}/24"), "dev", &ns_end])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", &ns_end, "up"])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
            net.addresses.push(address);
        }
        Ok(net)
    }

    /// Cuts host `i` off the network.
    pub fn cut(&self, i: usize) -> Result<(), String> {
        ip(&["link", "set", &format!("mcv{}h{i}", self.tag), "down"])
    }

    /// Connects host `i` again.
    pub fn heal(&self, i: usize) -> Result<(), String> {
        ip(&["link", "set", &format!("mcv{}h{i}", self.tag), "up"])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for (i, ns) in self.namespaces.iter().enumerate() {
            let _ = ip(&["link", "delete", &format!("mcv{}h{i}", self.tag)]);
            let _ = ip(&["netns", "delete", ns]);
        }
        let _ = ip(&["link", "delete", &self.bridge]);
    }
}
