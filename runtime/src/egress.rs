//! Where a worker's outbound `fetch` may connect. On a node, tenants must
//! not reach the node's own loopback services or its private network
//! through `fetch`: the addresses a request resolves to (names included,
//! so DNS cannot smuggle a private address in) are checked by deno_fetch's
//! connector against the deny list here.

use std::sync::Arc;

use deno_permissions::{Permissions, PermissionsContainer, PermissionsOptions, RuntimePermissionDescriptorParser};

/// Which addresses outbound requests may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Egress {
    /// Any address the node can reach (a developer's own machine).
    #[default]
    Any,
    /// Public addresses only: no loopback, private, link-local, carrier-NAT
    /// or unspecified ones.
    PublicOnly,
}

/// The networks [`Egress::PublicOnly`] refuses, as deno_permissions writes
/// them. IPv4-mapped IPv6 addresses count as their IPv4 address. Its parser
/// takes IPv6 addresses but no IPv6 prefixes: unique-local (`fc00::/7`) and
/// link-local (`fe80::/10`) IPv6 networks are not refused.
pub const PRIVATE_NETWORKS: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "[::]",
    "[::1]",
];

/// The permissions an isolate's ops are checked against: everything a
/// worker can ask for is allowed (workers have no filesystem, processes or
/// environment to begin with), but for the network, as `egress` says.
pub(crate) fn permissions(egress: Egress) -> PermissionsContainer {
    let parser = Arc::new(RuntimePermissionDescriptorParser::new(sys_traits::impls::RealSys));
    match egress {
        Egress::Any => PermissionsContainer::allow_all(parser),
        Egress::PublicOnly => {
            let options = PermissionsOptions {
                // Empty: every host, but for those denied.
                allow_net: Some(Vec::new()),
                deny_net: Some(PRIVATE_NETWORKS.iter().map(|net| net.to_string()).collect()),
                ..Default::default()
            };
            let permissions = Permissions::from_options(parser.as_ref(), &options).expect("the private networks parse");
            PermissionsContainer::new(parser, permissions)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_refused_and_public_ones_allowed() {
        let mut public_only = permissions(Egress::PublicOnly);
        for private in ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "::", "::ffff:127.0.0.1"] {
            let ip: std::net::IpAddr = private.parse().unwrap();
            assert!(public_only.check_net_resolved(&ip, 80, "fetch()").is_err(), "{private} was allowed");
        }
        for public in ["93.184.216.34", "2606:2800:220:1::1"] {
            let ip: std::net::IpAddr = public.parse().unwrap();
            assert!(public_only.check_net_resolved(&ip, 443, "fetch()").is_ok(), "{public} was refused");
        }
        let mut any = permissions(Egress::Any);
        assert!(any.check_net_resolved(&"127.0.0.1".parse().unwrap(), 80, "fetch()").is_ok());
    }
}
