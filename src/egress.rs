//! Egress for proxy mode: where a proxied request may go, and the HTTP client that takes it
//! there. The rules are pure functions (unit-tested here); the only I/O is the resolver.
//!
//! - [`is_public`]: whether an address is on the public internet (not private, loopback,
//!   link-local, shared, metadata, documentation, multicast…), including the IPv4-mapped
//!   and NAT64 forms of the IPv4 ranges.
//! - [`RelPath`]: the agent's path below the connection's `base_url`, refused when it could
//!   escape it (dot-segments in any encoding, encoded `/` or `\`, double encoding).
//! - [`join`]: the upstream URL, checked to keep the base's origin and path prefix.
//! - [`GuardedResolver`]: the client's only resolver. It resolves once per connection and
//!   refuses the whole answer if any address is not public, so the address that is checked
//!   is the address that is dialled (no window for a DNS answer that changes in between).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("the path is not allowed: {0}")]
    Path(&'static str),
    #[error("the upstream host resolves to a non-public address, and the connection does not allow private addresses")]
    NotPublic,
    #[error("the upstream URL is not valid: {0}")]
    Url(&'static str),
}

/// Whether `ip` is a public unicast address (what an upstream API has).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = ip.is_unspecified()      // 0.0.0.0
        || a == 0                          // 0.0.0.0/8 "this network"
        || ip.is_private()                 // 10/8, 172.16/12, 192.168/16
        || ip.is_loopback()                // 127/8
        || ip.is_link_local()              // 169.254/16, incl. 169.254.169.254 (cloud metadata)
        || (a == 100 && (b & 0xc0) == 64)  // 100.64/10 shared address space (incl. Alibaba's 100.100.100.200)
        || (a == 192 && b == 0 && c == 0)  // 192.0.0/24 IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)  // TEST-NET-1
        || (a == 198 && (b & 0xfe) == 18)  // 198.18/15 benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113)  // TEST-NET-3
        || a >= 224; // multicast, reserved 240/4, broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    // The IPv4 forms: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d), NAT64 (64:ff9b::/96
    // and the local-use 64:ff9b:1::/48) and 6to4 (2002::/16) carry an IPv4 address that is
    // what is really reached.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    if s[0..6] == [0, 0, 0, 0, 0, 0] && !(s[6] == 0 && s[7] <= 1) {
        return is_public_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_public_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
    }
    // The local-use NAT64 prefix (its translator may embed the IPv4 address anywhere) and
    // IPv4-translated addresses (::ffff:0:a.b.c.d): refused whole.
    if (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) || (s[0..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0) {
        return false;
    }
    if s[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32));
    }
    let refused = ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] & 0xfe00) == 0xfc00        // fc00::/7 unique local, incl. fd00:ec2::254 (AWS metadata)
        || (s[0] & 0xffc0) == 0xfe80        // fe80::/10 link-local
        || (s[0] & 0xffc0) == 0xfec0        // fec0::/10 site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00        // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] < 0x0200) // 2001::/23 IETF protocol assignments (Teredo, ORCHID…)
        || s[0] == 0x0100 && s[1..4] == [0, 0, 0]; // 100::/64 discard
    !refused
}

/// A path below the connection's `base_url`, as the agent sent it (still percent-encoded),
/// checked segment by segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath(String);

impl RelPath {
    /// Checks `raw` (the request path after `/v1/proxy/<connection>/`, percent-encoded):
    /// no dot-segments in any encoding, no encoded `/` or `\`, no double encoding, no empty
    /// segment except a trailing slash, no control characters. `@`, `:` and the other
    /// characters real APIs put in paths pass.
    pub fn parse(raw: &str) -> Result<RelPath, EgressError> {
        if raw.len() > 4096 {
            return Err(EgressError::Path("longer than 4096 bytes"));
        }
        if raw.starts_with('/') {
            return Err(EgressError::Path("empty path segment"));
        }
        let segments: Vec<&str> = raw.split('/').collect();
        let last = segments.len() - 1;
        for (i, seg) in segments.iter().enumerate() {
            if seg.is_empty() {
                if i == last {
                    continue; // a trailing slash (or the empty path)
                }
                return Err(EgressError::Path("empty path segment"));
            }
            if seg.bytes().any(|b| b == b'\\' || b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#') {
                return Err(EgressError::Path("backslash, space or control character"));
            }
            let decoded = percent_decode(seg).ok_or(EgressError::Path("invalid percent-encoding"))?;
            if std::str::from_utf8(&decoded).is_err() {
                return Err(EgressError::Path("percent-encoding that is not UTF-8"));
            }
            if is_dot_segment(&decoded) {
                return Err(EgressError::Path("dot-segment"));
            }
            if decoded.iter().any(|b| matches!(b, b'/' | b'\\' | b'%') || b.is_ascii_control()) {
                return Err(EgressError::Path("encoded '/', '\\', '%' or control character"));
            }
        }
        Ok(RelPath(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the path matches one of `patterns`: `/`-separated, where `*` matches one
    /// segment and a final `**` any rest (also none). Matched against the encoded path.
    pub fn matches_any(&self, patterns: &[String]) -> bool {
        patterns.iter().any(|p| self.matches(p))
    }

    fn matches(&self, pattern: &str) -> bool {
        let mut path = self.0.split('/');
        let mut pat = pattern.trim_start_matches('/').split('/').peekable();
        while let Some(p) = pat.next() {
            if p == "**" && pat.peek().is_none() {
                return true;
            }
            match path.next() {
                Some(s) if p == "*" && !s.is_empty() => {}
                Some(s) if s == p => {}
                _ => return false,
            }
        }
        path.next().is_none()
    }
}

/// A segment some server would take for `.` or `..`: only dots (and spaces) before any
/// `;parameters` (servlet containers drop those, so `..;x` climbs), or nothing at all there.
fn is_dot_segment(decoded: &[u8]) -> bool {
    let head = decoded.split(|b| *b == b';').next().unwrap_or(&[]);
    head.iter().all(|b| *b == b'.' || *b == b' ')
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (h, l) = (hex(*b.get(i + 1)?)?, hex(*b.get(i + 2)?)?);
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The upstream URL: `rel` joined onto `base` (which ends without a query), with the
/// agent's raw `query`. Refused unless the result keeps the base's origin and lies under
/// its path.
pub fn join(base: &url::Url, rel: &RelPath, query: Option<&str>) -> Result<url::Url, EgressError> {
    let base_path = base.path().trim_end_matches('/');
    let mut raw = format!("{}://{}{}/{}", base.scheme(), authority(base)?, base_path, rel.as_str());
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        if q.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'#') {
            return Err(EgressError::Url("the query string holds a space, '#' or a control character"));
        }
        raw.push('?');
        raw.push_str(q);
    }
    let url = url::Url::parse(&raw).map_err(|_| EgressError::Url("the joined URL does not parse"))?;
    if url.origin() != base.origin() {
        return Err(EgressError::Path("the path leaves the base URL's origin"));
    }
    let under = url.path().strip_prefix(base_path).is_some_and(|rest| rest.starts_with('/'));
    if !under {
        return Err(EgressError::Path("the path leaves the base URL"));
    }
    if url.path() != format!("{base_path}/{}", rel.as_str()) {
        return Err(EgressError::Path("characters such as '\"', '<', '>', '{' or '}' must be percent-encoded"));
    }
    Ok(url)
}

fn authority(u: &url::Url) -> Result<String, EgressError> {
    let host = u.host_str().ok_or(EgressError::Url("no host"))?;
    Ok(match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    })
}

/// Refuses a URL whose host is an IP literal that is not public (names are checked when
/// they are resolved, by [`GuardedResolver`]).
pub fn check_literal(url: &url::Url, allow_private: bool) -> Result<(), EgressError> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(url::Host::Domain(_)) => return Ok(()),
        None => return Err(EgressError::Url("no host")),
    };
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(EgressError::NotPublic)
    }
}

/// Checks one DNS answer: every address must be public (a mixed answer is refused whole:
/// which one the connector dials is not ours to predict).
pub fn check_answer(addrs: &[SocketAddr], allow_private: bool) -> Result<(), EgressError> {
    if addrs.is_empty() {
        return Err(EgressError::Url("the upstream host has no address"));
    }
    if allow_private || addrs.iter().all(|a| is_public(a.ip())) {
        Ok(())
    } else {
        Err(EgressError::NotPublic)
    }
}

/// Looks a name up (a trait so that tests can answer what a real DNS server will not on
/// demand, such as an answer that changes between two lookups).
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, host: String) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;
}

/// The system resolver (getaddrinfo, via tokio).
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: String) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) })
    }
}

/// The proxy client's resolver: every connection's addresses come from one lookup, checked
/// by [`check_answer`], and the connector dials exactly those.
pub struct GuardedResolver {
    lookup: Arc<dyn Lookup>,
    allow_private: bool,
}

impl GuardedResolver {
    pub fn new(lookup: Arc<dyn Lookup>, allow_private: bool) -> Self {
        GuardedResolver { lookup, allow_private }
    }

    /// Resolves `host` and checks the answer.
    pub async fn resolve_checked(&self, host: String) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let addrs = self.lookup.lookup(host).await?;
        check_answer(&addrs, self.allow_private)?;
        Ok(addrs)
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = GuardedResolver { lookup: self.lookup.clone(), allow_private: self.allow_private };
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = this.resolve_checked(host).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether a client error came from the egress guard.
pub fn refused_by_guard(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<EgressError>().is_some() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The HTTP client for proxied calls: the guarded resolver, no environment proxies (they
/// would dial what they resolve themselves), no redirects, no cookie store, no automatic
/// decompression (bodies pass through as the upstream sent them).
pub fn client(lookup: Arc<dyn Lookup>, allow_private: bool) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver::new(lookup, allow_private)))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_loopback_link_local_metadata_and_their_ipv6_forms_are_not_public() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "127.0.0.1",
            "127.255.0.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.100.100.200",
            "100.127.255.255",
            "192.0.0.192",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:7f00:0:100:808:808",
            "::ffff:0:808:808",
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip(s)), "{s} must be refused");
        }
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip(s)), "{s} is public");
        }
    }

    #[test]
    fn paths_that_could_escape_the_base_are_refused() {
        for bad in [
            "..",
            "a/../b",
            "a/./b",
            "%2e%2e/x",
            "%2E%2E",
            ".%2e/x",
            "%2e./x",
            "a/%2e",
            "a%2fb",
            "a%2Fb",
            "a%5cb",
            "a\\b",
            "%252e%252e/x",
            "a%25252fb",
            "a//b",
            "/etc/passwd",
            "a%00b",
            "a%0ab",
            "a%zz",
            "a%2",
            "..;",
            "users/..;/admin",
            "%2e%2e;x/y",
            "...",
            ". ",
            ";jsessionid=1",
            "%c0%ae%c0%ae",
            "%ff",
        ] {
            assert!(RelPath::parse(bad).is_err(), "{bad} must be refused");
        }
        for good in
            ["", "users/a@x.com", "@scope/pkg", "v1/items:batchGet", "calendars/primary/events", "a/b/", "a%20b", "caf%C3%A9", "x;y=1"]
        {
            assert!(RelPath::parse(good).is_ok(), "{good} must pass");
        }
    }

    #[test]
    fn joined_urls_keep_the_origin_and_the_base_path() {
        let base = url::Url::parse("https://api.example.com/v2").unwrap();
        let u = join(&base, &RelPath::parse("users/a@x.com").unwrap(), Some("q=1&api_key=x")).unwrap();
        assert_eq!(u.as_str(), "https://api.example.com/v2/users/a@x.com?q=1&api_key=x");
        let u = join(&base, &RelPath::parse("@scope/pkg").unwrap(), None).unwrap();
        assert_eq!(u.as_str(), "https://api.example.com/v2/@scope/pkg");
        let root = url::Url::parse("https://api.example.com/").unwrap();
        assert_eq!(join(&root, &RelPath::parse("x").unwrap(), None).unwrap().as_str(), "https://api.example.com/x");
        assert_eq!(join(&base, &RelPath::parse("").unwrap(), None).unwrap().as_str(), "https://api.example.com/v2/");
        // Characters that would end the path or start a fragment never get that far.
        assert!(join(&base, &RelPath("a#b".into()), None).is_err());
        assert!(join(&base, &RelPath("a/../../x".into()), None).is_err(), "a RelPath built unchecked is still caught");
        assert!(join(&base, &RelPath::parse("x").unwrap(), Some("a#b")).is_err());
    }

    #[test]
    fn allowed_path_patterns() {
        let p = |s: &str| RelPath::parse(s).unwrap();
        let pats = vec!["/calendars/*/events".to_owned(), "/users/**".to_owned()];
        assert!(p("calendars/primary/events").matches_any(&pats));
        assert!(!p("calendars/primary/events/1").matches_any(&pats));
        assert!(!p("calendars/primary").matches_any(&pats));
        assert!(p("users").matches_any(&pats));
        assert!(p("users/a/b/c").matches_any(&pats));
        assert!(!p("usersx/a").matches_any(&pats));
        assert!(!p("keys/new").matches_any(&pats));
    }

    #[test]
    fn literal_and_resolved_addresses() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(check_literal(&u("https://169.254.169.254/latest"), false), Err(EgressError::NotPublic));
        assert_eq!(check_literal(&u("https://[::ffff:127.0.0.1]/"), false), Err(EgressError::NotPublic));
        assert_eq!(check_literal(&u("https://[fd00:ec2::254]/"), false), Err(EgressError::NotPublic));
        assert!(check_literal(&u("https://127.0.0.1/"), true).is_ok());
        assert!(check_literal(&u("https://api.example.com/"), false).is_ok());
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        assert!(check_answer(&[a("8.8.8.8:443")], false).is_ok());
        assert_eq!(check_answer(&[a("8.8.8.8:443"), a("10.0.0.1:443")], false), Err(EgressError::NotPublic));
        assert!(check_answer(&[], true).is_err());
    }

    /// A DNS answer that changes between lookups (rebinding): each connection's addresses
    /// come from one lookup and are checked, so the second, private answer is refused.
    #[tokio::test]
    async fn an_answer_that_changes_between_lookups_is_checked_each_time() {
        struct Rebinding(std::sync::atomic::AtomicUsize);
        impl Lookup for Rebinding {
            fn lookup(&self, _: String) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>> {
                let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let addr: SocketAddr = if n == 0 { "93.184.216.34:0" } else { "127.0.0.1:0" }.parse().unwrap();
                Box::pin(async move { Ok(vec![addr]) })
            }
        }
        let r = GuardedResolver::new(Arc::new(Rebinding(Default::default())), false);
        assert!(r.resolve_checked("rebind.example".into()).await.is_ok());
        let second = r.resolve_checked("rebind.example".into()).await.unwrap_err();
        assert!(refused_by_guard(second.as_ref()));
    }
}
