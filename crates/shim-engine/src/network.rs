//! What of the pod's network a guest may use.
//!
//! By default a guest uses the container's network namespace as a native
//! process would (see [`crate::wasi`]). The `wasmtime.containerd.io/network`
//! annotation narrows that for the guest's own sockets (WASI TCP and UDP,
//! name lookup) and its outgoing `wasi:http` requests: `none`, or a list of
//! `listen`, `dns` and `connect:ADDR[/PREFIX][:PORT]` rules (an IPv6 address
//! in brackets). wasmtime-wasi asks [`NetworkPolicy::allows`] before every
//! bind, listen, accept, connect and send, so a refused use fails in the guest
//! with `access-denied` and never reaches the kernel. The HTTP server the shim
//! runs for a `wasi:http` component is the shim's, not the guest's, and is not
//! narrowed.

use std::net::{IpAddr, SocketAddr};

use wasmtime_wasi::sockets::SocketAddrUse;

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
    fn matches(&self, addr: SocketAddr) -> bool {
        if self.port.is_some_and(|port| port != addr.port()) {
            return false;
        }
        let ip = match addr.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
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

    /// Whether the guest may use `addr` for `use_`.
    pub fn allows(&self, addr: SocketAddr, use_: SocketAddrUse) -> bool {
        let Self::Limited {
            listen, connect, ..
        } = self
        else {
            return true;
        };
        match use_ {
            SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend => self.allows_connect(addr),
            // Answers from a peer the guest may talk to (connected UDP, DNS),
            // or anything on a socket it may listen with.
            SocketAddrUse::UdpReceive => *listen || self.allows_connect(addr),
            SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => *listen,
            // Connecting and sending bind a wildcard address first.
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                *listen || (!connect.is_empty() && addr.ip().is_unspecified() && addr.port() == 0)
            }
        }
    }

    /// Whether a connection to `addr` is allowed.
    pub fn allows_connect(&self, addr: SocketAddr) -> bool {
        match self {
            Self::All => true,
            Self::Limited { connect, .. } => connect.iter().any(|rule| rule.matches(addr)),
        }
    }

    pub(crate) fn tcp(&self) -> bool {
        match self {
            Self::All => true,
            Self::Limited {
                listen, connect, ..
            } => *listen || !connect.is_empty(),
        }
    }

    pub(crate) fn dns(&self) -> bool {
        match self {
            Self::All => true,
            Self::Limited { dns, .. } => *dns,
        }
    }
}

/// Outgoing `wasi:http` under a narrowed network: a request may go only to
/// an IP address a connect rule allows. Host names are refused: the check
/// and the connection would each resolve them, and the answers may differ.
pub(crate) struct OutgoingHttp(pub std::sync::Arc<NetworkPolicy>);

impl wasmtime_wasi_http::WasiHttpHooks for OutgoingHttp {
    fn send_request(
        &mut self,
        request: hyper::http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = wasmtime_wasi_http::Result<(
                    hyper::http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
                )>,
            > + Send,
    > {
        let uri = request.uri();
        let https = uri.scheme() == Some(&hyper::http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let allowed = host
            .parse::<IpAddr>()
            .is_ok_and(|ip| self.0.allows_connect(SocketAddr::new(ip, port)));
        if !allowed {
            log::debug!("outgoing HTTP to {host}:{port} refused by the network annotation");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let default: &mut dyn wasmtime_wasi_http::WasiHttpHooks = Default::default();
        default.send_request(request, options, fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn rules_allow_exactly_what_they_name() {
        let policy =
            NetworkPolicy::parse("connect:10.0.0.0/8:443, connect:[fd00::]/8, dns").unwrap();
        assert!(policy.allows(addr("10.1.2.3:443"), SocketAddrUse::TcpConnect));
        assert!(!policy.allows(addr("10.1.2.3:80"), SocketAddrUse::TcpConnect));
        assert!(!policy.allows(addr("11.0.0.1:443"), SocketAddrUse::TcpConnect));
        assert!(policy.allows(addr("[::ffff:10.0.0.1]:443"), SocketAddrUse::TcpConnect));
        assert!(policy.allows(addr("[fd12::1]:53"), SocketAddrUse::UdpSend));
        assert!(!policy.allows(addr("[fe80::1]:53"), SocketAddrUse::UdpSend));
        assert!(policy.allows(addr("[fd12::1]:53"), SocketAddrUse::UdpReceive));
        assert!(!policy.allows(addr("8.8.8.8:53"), SocketAddrUse::UdpReceive));
        // Connecting binds a wildcard first; listening is not allowed.
        assert!(policy.allows(addr("0.0.0.0:0"), SocketAddrUse::TcpBind));
        assert!(!policy.allows(addr("0.0.0.0:8080"), SocketAddrUse::TcpBind));
        assert!(!policy.allows(addr("0.0.0.0:8080"), SocketAddrUse::TcpListen));
        assert!(policy.dns() && policy.tcp());

        let listen = NetworkPolicy::parse("listen").unwrap();
        assert!(listen.allows(addr("0.0.0.0:8080"), SocketAddrUse::TcpBind));
        assert!(listen.allows(addr("0.0.0.0:8080"), SocketAddrUse::TcpListen));
        assert!(!listen.allows(addr("1.1.1.1:80"), SocketAddrUse::TcpConnect));
        assert!(!listen.dns());

        let none = NetworkPolicy::parse("none").unwrap();
        assert!(!none.tcp() && !none.dns());
        assert!(!none.allows(addr("127.0.0.1:80"), SocketAddrUse::TcpConnect));
        assert_eq!(NetworkPolicy::parse("all").unwrap(), NetworkPolicy::All);
        assert!(NetworkPolicy::All.allows(addr("1.1.1.1:80"), SocketAddrUse::TcpConnect));
        let one = NetworkPolicy::parse("connect:127.0.0.1").unwrap();
        assert!(one.allows(addr("127.0.0.1:1"), SocketAddrUse::TcpConnect));
        assert!(!one.allows(addr("127.0.0.2:1"), SocketAddrUse::TcpConnect));
    }

    /// What the hook answers a guest's outgoing request: refused at once
    /// (`Err(HttpRequestDenied)`), or anything else (handed to wasmtime's
    /// sender, which here fails to connect or is still connecting).
    fn outgoing(policy: &str, uri: &str) -> bool {
        use http_body_util::{BodyExt, Empty};
        use wasmtime_wasi_http::WasiHttpHooks;
        let mut hooks = OutgoingHttp(std::sync::Arc::new(NetworkPolicy::parse(policy).unwrap()));
        let body = Empty::new().map_err(|never| match never {}).boxed_unsync();
        let request = hyper::http::Request::get(uri).body(body).unwrap();
        let sent = hooks.send_request(request, None, Box::new(async { Ok(()) }));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answer = runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(200), Box::into_pin(sent)).await
        });
        !matches!(
            answer,
            Ok(Err(wasmtime_wasi_http::Error::HttpRequestDenied))
        )
    }

    #[test]
    fn outgoing_http_goes_only_to_allowed_addresses() {
        assert!(!outgoing("none", "http://127.0.0.1:9/"));
        assert!(
            !outgoing("connect:10.0.0.0/8:443", "http://10.0.0.1/"),
            "port 80"
        );
        assert!(outgoing("connect:10.0.0.0/8:443", "https://10.0.0.1/"));
        assert!(outgoing("connect:127.0.0.1:9", "http://127.0.0.1:9/"));
        assert!(outgoing("connect:[::1]", "http://[::1]:9/"));
        assert!(
            !outgoing("connect:0.0.0.0/0", "http://localhost:9/"),
            "names are refused under a narrowed network"
        );
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
