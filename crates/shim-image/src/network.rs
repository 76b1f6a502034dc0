//! What of the pod's network a guest may use: the
//! [`NETWORK_ANNOTATION`](crate::NETWORK_ANNOTATION).
//!
//! By default a guest uses the container's network namespace as a native
//! process would. The annotation narrows that for the guest's own sockets
//! (WASI TCP and UDP, name lookup) and its outgoing `wasi:http` requests:
//! `none`, or a list of `listen`, `dns` and `connect:ADDR[/PREFIX][:PORT]`
//! rules (an IPv6 address in brackets). The engine (`shim_engine::network`)
//! checks every bind, listen, accept, connect and send against it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The network a guest may use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkPolicy {
    /// The container's network, as a native process would use it.
    #[default]
    All,
    /// Only what the rules allow; no rules is no network at all.
    Limited {
        listen: bool,
        dns: bool,
        connect: Vec<ConnectRule>,
    },
}

/// Outbound connections (and UDP datagrams) to a network, on one port or all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRule {
    pub network: IpAddr,
    pub prefix: u8,
    pub port: Option<u16>,
}

impl ConnectRule {
    /// Whether `addr` is in the rule's network and on its port. An IPv4
    /// address and its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) are the same
    /// address, whichever family the rule is written in.
    pub fn matches(&self, addr: SocketAddr) -> bool {
        if self.port.is_some_and(|port| port != addr.port()) {
            return false;
        }
        let ip = match (self.network, addr.ip()) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (IpAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            (_, ip) => ip,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// `ADDR[/PREFIX][:PORT]`, with an IPv6 `ADDR` in brackets.
    fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "connect:{text} is not ADDR[/PREFIX][:PORT] (e.g. connect:10.0.0.0/8:443, \
                 connect:[fd00::]/8)"
            )
        };
        let (addr, rest) = match text.strip_prefix('[') {
            Some(v6) => v6.split_once(']').ok_or_else(bad)?,
            None => {
                let end = text.find(['/', ':']).unwrap_or(text.len());
                text.split_at(end)
            }
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let (prefix, port) = match rest.split_once(':') {
            Some((prefix, port)) => (prefix, Some(port)),
            None => (rest, None),
        };
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix.strip_prefix('/') {
            Some(bits) => bits
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(bad)?,
            None if prefix.is_empty() => max,
            None => return Err(bad()),
        };
        let port = match port {
            Some(port) => Some(
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(bad)?,
            ),
            None => None,
        };
        Ok(Self {
            network,
            prefix,
            port,
        })
    }
}

/// The rule as the annotation writes it, prefix and port always spelled out.
impl fmt::Display for ConnectRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.network {
            IpAddr::V4(v4) => write!(f, "connect:{v4}/{}", self.prefix)?,
            IpAddr::V6(v6) => write!(f, "connect:[{v6}]/{}", self.prefix)?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

impl NetworkPolicy {
    /// Reads the annotation's value (see the module docs).
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value == "all" {
            return Ok(Self::All);
        }
        let (mut listen, mut dns, mut connect) = (false, false, Vec::new());
        if value != "none" {
            for rule in value.split(',').map(str::trim) {
                match rule {
                    "listen" => listen = true,
                    "dns" => dns = true,
                    _ => match rule.strip_prefix("connect:") {
                        Some(target) => connect.push(ConnectRule::parse(target)?),
                        None => {
                            return Err(format!(
                                "{rule:?} is not a rule (all, none, or a list of listen, dns, \
                                 connect:ADDR[/PREFIX][:PORT])"
                            ))
                        }
                    },
                }
            }
        }
        Ok(Self::Limited {
            listen,
            dns,
            connect,
        })
    }

    /// Whether a connection (or a datagram) to `addr` is allowed.
    pub fn allows_connect(&self, addr: SocketAddr) -> bool {
        match self {
            Self::All => true,
            Self::Limited { connect, .. } => connect.iter().any(|rule| rule.matches(addr)),
        }
    }

    /// Whether the guest may have TCP and UDP sockets at all.
    pub fn tcp(&self) -> bool {
        match self {
            Self::All => true,
            Self::Limited {
                listen, connect, ..
            } => *listen || !connect.is_empty(),
        }
    }

    /// Whether the guest may look names up.
    pub fn dns(&self) -> bool {
        match self {
            Self::All => true,
            Self::Limited { dns, .. } => *dns,
        }
    }
}

/// The policy as an annotation value that parses back to it.
impl fmt::Display for NetworkPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self::Limited {
            listen,
            dns,
            connect,
        } = self
        else {
            return f.write_str("all");
        };
        let rules: Vec<String> = [(*listen, "listen"), (*dns, "dns")]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, rule)| rule.to_string())
            .chain(connect.iter().map(ConnectRule::to_string))
            .collect();
        if rules.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&rules.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn rules_name_networks_and_ports() {
        let policy =
            NetworkPolicy::parse("connect:10.0.0.0/8:443, connect:[fd00::]/8, dns").unwrap();
        assert!(policy.allows_connect(addr("10.1.2.3:443")));
        assert!(!policy.allows_connect(addr("10.1.2.3:80")));
        assert!(!policy.allows_connect(addr("11.0.0.1:443")));
        assert!(policy.allows_connect(addr("[::ffff:10.0.0.1]:443")));
        assert!(policy.allows_connect(addr("[fd12::1]:53")));
        assert!(!policy.allows_connect(addr("[fe80::1]:53")));
        assert!(policy.dns() && policy.tcp());
        let listen = NetworkPolicy::parse("listen").unwrap();
        assert!(listen.tcp() && !listen.dns());
        assert!(!listen.allows_connect(addr("1.1.1.1:80")));
        let none = NetworkPolicy::parse("none").unwrap();
        assert!(!none.tcp() && !none.dns());
        assert_eq!(NetworkPolicy::parse(" all ").unwrap(), NetworkPolicy::All);
        // Found by fuzzing: a rule written in IPv6 over IPv4-mapped addresses
        // matched no IPv4 address at all.
        let mapped = NetworkPolicy::parse("connect:[::ffff:10.0.0.0]/104").unwrap();
        assert!(mapped.allows_connect(addr("10.9.8.7:80")));
        assert!(mapped.allows_connect(addr("[::ffff:10.9.8.7]:80")));
        assert!(!mapped.allows_connect(addr("11.0.0.1:80")));
        let v6_only = NetworkPolicy::parse("connect:[fd00::]/8").unwrap();
        assert!(!v6_only.allows_connect(addr("10.0.0.1:80")));
        let one = NetworkPolicy::parse("connect:127.0.0.1").unwrap();
        assert!(one.allows_connect(addr("127.0.0.1:1")));
        assert!(!one.allows_connect(addr("127.0.0.2:1")));
    }

    #[test]
    fn a_policy_prints_as_an_annotation_that_reads_back() {
        for (value, printed) in [
            ("all", "all"),
            ("none", "none"),
            ("dns, listen", "listen,dns"),
            (
                "connect:10.0.0.0/8:443,connect:[fd00::]/8",
                "connect:10.0.0.0/8:443,connect:[fd00::]/8",
            ),
            ("connect:127.0.0.1", "connect:127.0.0.1/32"),
        ] {
            let policy = NetworkPolicy::parse(value).unwrap();
            assert_eq!(policy.to_string(), printed, "{value}");
            assert_eq!(NetworkPolicy::parse(printed).unwrap(), policy, "{value}");
        }
    }

    #[test]
    fn bad_rules_are_refused_with_the_rule() {
        for bad in [
            "open",
            "connect:",
            "connect:10.0.0.0/33",
            "connect:10.0.0.0:0",
            "connect:10.0.0.0:http",
            "connect:fd00::/8",
            "connect:[fd00::/8",
            "connect:host.example:80",
            "listen,,dns",
        ] {
            let err = NetworkPolicy::parse(bad).unwrap_err();
            assert!(err.contains("is not"), "{bad}: {err}");
        }
    }
}
