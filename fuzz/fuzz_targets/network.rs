//! Arbitrary text as the `wasmtime.containerd.io/network` annotation
//! (`NetworkPolicy::parse`), then what its connect rules let through.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use shim_image::network::{ConnectRule, NetworkPolicy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match NetworkPolicy::parse(text) {
        Ok(policy) => policy,
        // A refusal quotes the rule that is wrong.
        Err(reason) => return assert!(reason.contains(" is not "), "{reason}"),
    };
    // Blanks around the value never change its meaning.
    assert_eq!(
        NetworkPolicy::parse(&format!(" {text}\t")).as_ref(),
        Ok(&policy)
    );
    // Printed, a policy reads back as itself.
    let printed = policy.to_string();
    assert_eq!(
        NetworkPolicy::parse(&printed).as_ref(),
        Ok(&policy),
        "{printed}"
    );
    let NetworkPolicy::Limited {
        listen,
        dns,
        connect,
    } = &policy
    else {
        return assert_eq!(text.trim(), "all");
    };
    assert_eq!(policy.dns(), *dns);
    assert_eq!(policy.tcp(), *listen || !connect.is_empty());
    if connect.is_empty() {
        let anywhere = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 80);
        assert!(!policy.allows_connect(anywhere), "no rule, no connection");
    }
    for rule in connect {
        check_rule(rule, &policy);
    }
});

/// A rule lets through the first and last address of its network, in either
/// address family's spelling, on its port, and nothing just outside.
fn check_rule(rule: &ConnectRule, policy: &NetworkPolicy) {
    assert_ne!(rule.port, Some(0));
    let port = rule.port.unwrap_or(1);
    let at = |ip: IpAddr| SocketAddr::new(ip, port);
    let (first, last, outside): (IpAddr, IpAddr, Option<IpAddr>) = match rule.network {
        IpAddr::V4(net) => {
            assert!(rule.prefix <= 32);
            let bits = u32::from(net);
            let host = u32::MAX.checked_shr(u32::from(rule.prefix)).unwrap_or(0);
            let outside = (rule.prefix > 0).then(|| bits ^ (1 << (32 - u32::from(rule.prefix))));
            // The IPv4-mapped IPv6 spelling of the network is in it too.
            assert!(rule.matches(at(IpAddr::V6(net.to_ipv6_mapped()))), "{rule}");
            (
                Ipv4Addr::from(bits).into(),
                Ipv4Addr::from(bits | host).into(),
                outside.map(|b| Ipv4Addr::from(b).into()),
            )
        }
        IpAddr::V6(net) => {
            assert!(rule.prefix <= 128);
            let bits = u128::from(net);
            let host = u128::MAX.checked_shr(u32::from(rule.prefix)).unwrap_or(0);
            let outside = (rule.prefix > 0).then(|| bits ^ (1 << (128 - u32::from(rule.prefix))));
            // An IPv4-mapped network matches the plain IPv4 spelling too.
            if let Some(v4) = net.to_ipv4_mapped() {
                assert!(rule.matches(at(IpAddr::V4(v4))), "{rule}");
            }
            (
                Ipv6Addr::from(bits).into(),
                Ipv6Addr::from(bits | host).into(),
                outside.map(|b| Ipv6Addr::from(b).into()),
            )
        }
    };
    for inside in [first, last] {
        assert!(rule.matches(at(inside)), "{rule} {inside}");
        assert!(policy.allows_connect(at(inside)), "{rule} {inside}");
    }
    if let Some(outside) = outside {
        assert!(!rule.matches(at(outside)), "{rule} {outside}");
    }
    if let Some(p) = rule.port {
        let other = if p == u16::MAX { 1 } else { p + 1 };
        assert!(
            !rule.matches(SocketAddr::new(first, other)),
            "{rule} port {other}"
        );
    }
}
