//! Where a worker's outbound `fetch` may connect. On a node, tenants must
//! not reach the node's own loopback services or its private network
//! through `fetch`: the addresses a request resolves to (names included,
//! so DNS cannot smuggle a private address in) are checked by deno_fetch's
//! connector against the deny list here.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

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
/// link-local (`fe80::/10`) IPv6 addresses are refused by [`fetch_checks`]
/// instead (in names' answers, and as literal hosts).
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
/// Parsed once per process; each isolate gets a container of its own.
pub(crate) fn permissions(egress: Egress) -> PermissionsContainer {
    static PARSER: OnceLock<Arc<RuntimePermissionDescriptorParser<sys_traits::impls::RealSys>>> = OnceLock::new();
    static PUBLIC_ONLY: OnceLock<Permissions> = OnceLock::new();
    let parser = PARSER.get_or_init(|| Arc::new(RuntimePermissionDescriptorParser::new(sys_traits::impls::RealSys)));
    match egress {
        Egress::Any => PermissionsContainer::allow_all(parser.clone()),
        Egress::PublicOnly => {
            let permissions = PUBLIC_ONLY.get_or_init(|| {
                let options = PermissionsOptions {
                    // Empty: every host, but for those denied.
                    allow_net: Some(Vec::new()),
                    deny_net: Some(PRIVATE_NETWORKS.iter().map(|net| net.to_string()).collect()),
                    ..Default::default()
                };
                Permissions::from_options(parser.as_ref(), &options).expect("the private networks parse")
            });
            PermissionsContainer::new(parser.clone(), permissions.clone())
        }
    }
}

/// Unique-local and link-local IPv6 addresses, which [`PRIVATE_NETWORKS`]
/// cannot name.
fn private_ipv6(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
        IpAddr::V4(_) => false,
    }
}

/// The request hook refusing such literal hosts, and a resolver dropping
/// such answers, for [`Egress::PublicOnly`]; nothing for [`Egress::Any`].
#[allow(clippy::type_complexity)]
pub(crate) fn fetch_checks(
    egress: Egress,
) -> (
    Option<deno_fetch::dns::Resolver>,
    Option<fn(&mut http::Request<deno_fetch::ReqBody>) -> Result<(), deno_error::JsErrorBox>>,
) {
    match egress {
        Egress::Any => (None, None),
        Egress::PublicOnly => {
            // One resolver for the process; each isolate's client clones it.
            static RESOLVER: OnceLock<deno_fetch::dns::Resolver> = OnceLock::new();
            let resolver = RESOLVER.get_or_init(|| {
                deno_fetch::dns::Resolver::custom(Arc::new(PublicResolver(
                    hyper_util::client::legacy::connect::dns::GaiResolver::new(),
                )))
            });
            (Some(resolver.clone()), Some(refuse_private_literal))
        }
    }
}

fn refuse_private_literal(request: &mut http::Request<deno_fetch::ReqBody>) -> Result<(), deno_error::JsErrorBox> {
    let host = request.uri().host().unwrap_or_default();
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(ip) if private_ipv6(ip) => {
            Err(deno_error::JsErrorBox::type_error(format!("fetch() may not connect to the private address {ip}")))
        }
        _ => Ok(()),
    }
}

/// The system's resolver, without private IPv6 answers.
#[derive(Debug)]
struct PublicResolver(hyper_util::client::legacy::connect::dns::GaiResolver);

impl deno_fetch::dns::Resolve for PublicResolver {
    fn resolve(&self, name: hyper_util::client::legacy::connect::dns::Name) -> deno_fetch::dns::Resolving {
        use tower_service::Service as _;
        let mut resolver = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addresses: Vec<SocketAddr> = resolver.call(name).await?.filter(|a| !private_ipv6(a.ip())).collect();
            if addresses.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host} resolves to no address fetch() may connect to"),
                ));
            }
            Ok(addresses.into_iter())
        })
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
        for private in ["fd00::1", "fc12:3456::1", "fe80::1"] {
            assert!(private_ipv6(private.parse().unwrap()), "{private}");
        }
        assert!(!private_ipv6("2606:2800:220:1::1".parse().unwrap()));
        let mut literal = http::Request::new(deno_fetch::ReqBody::empty());
        *literal.uri_mut() = "http://[fd00::1]:8080/".parse().unwrap();
        assert!(refuse_private_literal(&mut literal).is_err());
        *literal.uri_mut() = "http://example.com/".parse().unwrap();
        assert!(refuse_private_literal(&mut literal).is_ok());
        let mut any = permissions(Egress::Any);
        assert!(any.check_net_resolved(&"127.0.0.1".parse().unwrap(), 80, "fetch()").is_ok());
    }
}
