//! What of the pod's network a guest may use.
//!
//! By default a guest uses the container's network namespace as a native
//! process would (see `Invocation`). The `wasmtime.containerd.io/network`
//! annotation narrows that for the guest's own sockets (WASI TCP and UDP,
//! name lookup) and its outgoing `wasi:http` requests: `none`, or a list of
//! `listen`, `dns` and `connect:ADDR[/PREFIX][:PORT]` rules (an IPv6 address
//! in brackets; parsed by [`shim_image::network_policy`]). wasmtime-wasi asks
//! [`allows`] before every bind, listen, accept, connect and send, so a
//! refused use fails in the guest with `access-denied` and never reaches the
//! kernel. The HTTP server the shim
//! runs for a `wasi:http` component is the shim's, not the guest's, and is not
//! narrowed.

use std::net::{IpAddr, SocketAddr};

pub use shim_image::NetworkPolicy;
use wasmtime_wasi::sockets::SocketAddrUse;

/// Whether `policy` lets the guest use `addr` for `use_`.
pub fn allows(policy: &NetworkPolicy, addr: SocketAddr, use_: SocketAddrUse) -> bool {
    let NetworkPolicy::Limited {
        listen, connect, ..
    } = policy
    else {
        return true;
    };
    match use_ {
        SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend => policy.allows_connect(addr),
        // Answers from a peer the guest may talk to (connected UDP, DNS),
        // or anything on a socket it may listen with.
        SocketAddrUse::UdpReceive => *listen || policy.allows_connect(addr),
        SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => *listen,
        // Connecting and sending bind a wildcard address first.
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
            *listen || (!connect.is_empty() && addr.ip().is_unspecified() && addr.port() == 0)
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
        assert!(allows(
            &policy,
            addr("10.1.2.3:443"),
            SocketAddrUse::TcpConnect
        ));
        assert!(!allows(
            &policy,
            addr("10.1.2.3:80"),
            SocketAddrUse::TcpConnect
        ));
        assert!(!allows(
            &policy,
            addr("11.0.0.1:443"),
            SocketAddrUse::TcpConnect
        ));
        assert!(allows(
            &policy,
            addr("[::ffff:10.0.0.1]:443"),
            SocketAddrUse::TcpConnect
        ));
        assert!(allows(
            &policy,
            addr("[fd12::1]:53"),
            SocketAddrUse::UdpSend
        ));
        assert!(!allows(
            &policy,
            addr("[fe80::1]:53"),
            SocketAddrUse::UdpSend
        ));
        assert!(allows(
            &policy,
            addr("[fd12::1]:53"),
            SocketAddrUse::UdpReceive
        ));
        assert!(!allows(
            &policy,
            addr("8.8.8.8:53"),
            SocketAddrUse::UdpReceive
        ));
        // Connecting binds a wildcard first; listening is not allowed.
        assert!(allows(&policy, addr("0.0.0.0:0"), SocketAddrUse::TcpBind));
        assert!(!allows(
            &policy,
            addr("0.0.0.0:8080"),
            SocketAddrUse::TcpBind
        ));
        assert!(!allows(
            &policy,
            addr("0.0.0.0:8080"),
            SocketAddrUse::TcpListen
        ));
        assert!(policy.dns() && policy.tcp());

        let listen = NetworkPolicy::parse("listen").unwrap();
        assert!(allows(
            &listen,
            addr("0.0.0.0:8080"),
            SocketAddrUse::TcpBind
        ));
        assert!(allows(
            &listen,
            addr("0.0.0.0:8080"),
            SocketAddrUse::TcpListen
        ));
        assert!(!allows(
            &listen,
            addr("1.1.1.1:80"),
            SocketAddrUse::TcpConnect
        ));
        assert!(!listen.dns());

        let none = NetworkPolicy::parse("none").unwrap();
        assert!(!none.tcp() && !none.dns());
        assert!(!allows(
            &none,
            addr("127.0.0.1:80"),
            SocketAddrUse::TcpConnect
        ));
        assert_eq!(NetworkPolicy::parse("all").unwrap(), NetworkPolicy::All);
        assert!(allows(
            &NetworkPolicy::All,
            addr("1.1.1.1:80"),
            SocketAddrUse::TcpConnect
        ));
        let one = NetworkPolicy::parse("connect:127.0.0.1").unwrap();
        assert!(allows(&one, addr("127.0.0.1:1"), SocketAddrUse::TcpConnect));
        assert!(!allows(
            &one,
            addr("127.0.0.2:1"),
            SocketAddrUse::TcpConnect
        ));
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
}
