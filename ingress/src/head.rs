//! Checks on a request's head before any worker sees it: the host it
//! names, and the headers that carry what the front knows of the client.
//! Pure: a head in, a decision or a rewritten header map out.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, HOST};

/// Why a request is refused before it reaches a worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    #[error("the request has no Host header")]
    MissingHost,
    #[error("the request has more than one Host header")]
    DuplicateHost,
    #[error("the Host is not a valid host name with an optional port")]
    InvalidHost,
    #[error("the CONNECT method is not supported")]
    Connect,
    #[error("the request target must be a path (as in \"GET /x\")")]
    NotAPath,
}

impl HeadError {
    pub fn status(&self) -> http::StatusCode {
        match self {
            HeadError::Connect => http::StatusCode::METHOD_NOT_ALLOWED,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// The host (with its port, if any) a request is for: the request target's
/// authority when it has one (HTTP/2 and HTTP/3 `:authority`, HTTP/1.1's
/// absolute form), else its one `Host` header. HTTP/1.0 may omit the host;
/// `default` is used then. Whatever is returned is a plain authority: no
/// user info, path, query or fragment can ride along into the URL a worker
/// sees.
pub fn request_host(
    version: http::Version,
    target_authority: Option<&str>,
    headers: &HeaderMap,
    default: impl FnOnce() -> String,
) -> Result<String, HeadError> {
    if let Some(authority) = target_authority {
        return valid_authority(authority).then(|| authority.to_owned()).ok_or(HeadError::InvalidHost);
    }
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(HeadError::DuplicateHost),
        (Some(host), None) => {
            let host = host.to_str().map_err(|_| HeadError::InvalidHost)?;
            valid_authority(host).then(|| host.to_owned()).ok_or(HeadError::InvalidHost)
        }
        (None, _) if version == http::Version::HTTP_10 || version == http::Version::HTTP_09 => Ok(default()),
        (None, _) => Err(HeadError::MissingHost),
    }
}

/// `host[:port]`, where host is a DNS name (letters, digits, `-`, `_`, `.`),
/// an IPv4 address or a bracketed IPv6 address, and port is a number up to
/// 65535. Stricter than RFC 3986's reg-name on purpose: no percent
/// escapes, no sub-delimiters, nothing that a URL parser could read as
/// user info, path, query or fragment.
pub fn valid_authority(authority: &str) -> bool {
    if authority.is_empty() || authority.len() > 261 {
        return false;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((address, after)) = rest.split_once(']') else { return false };
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(authority), None),
        }
    };
    let host_ok = host.is_none_or(|host| {
        !host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    });
    let port_ok =
        port.is_none_or(|port| !port.is_empty() && port.len() <= 5 && port.parse::<u32>().is_ok_and(|p| p <= 65535));
    host_ok && port_ok
}

/// The request target as the worker's URL parser will read it: dot
/// segments removed (RFC 3986, 5.2.4; `%2e` counts as a dot, as the WHATWG
/// URL standard says) and backslashes read as slashes (as it reads them in
/// http URLs). Routes then match the path the worker sees: `/x/../admin`
/// is `/admin` to both, not `/x` to the router and `/admin` to the worker.
/// `target` starts with `/`.
pub fn normalize_target(target: &str) -> std::borrow::Cow<'_, str> {
    let (path, query) = match target.find('?') {
        Some(at) => target.split_at(at),
        None => (target, ""),
    };
    let is_dot = |segment: &str| segment == "." || segment.eq_ignore_ascii_case("%2e");
    let is_dot_dot = |segment: &str| {
        let lower = segment.to_ascii_lowercase();
        matches!(lower.as_str(), ".." | ".%2e" | "%2e." | "%2e%2e")
    };
    let needs_work = path.contains('\\') || path.split('/').any(|segment| is_dot(segment) || is_dot_dot(segment));
    if !needs_work {
        return target.into();
    }
    let path = path.replace('\\', "/");
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut out: Vec<&str> = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        let dot = is_dot(segment);
        let dot_dot = is_dot_dot(segment);
        if dot_dot {
            out.pop();
        } else if !dot {
            out.push(segment);
        }
        // "/a/.." and "/a/." end in a directory: keep the trailing slash.
        if i == last && (dot || dot_dot) {
            out.push("");
        }
    }
    format!("/{}{query}", out.join("/")).into()
}

/// Headers Cloudflare's edge sets about the client and the request: a
/// client's own values for them are dropped, never passed on. (Other
/// `cf-*` headers, such as Access's `CF-Access-Client-Id`, are the
/// client's to send.)
const EDGE_HEADERS: [HeaderName; 19] = [
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("cf-connecting-ipv6"),
    HeaderName::from_static("cf-ew-via"),
    HeaderName::from_static("cf-ipcity"),
    HeaderName::from_static("cf-ipcontinent"),
    HeaderName::from_static("cf-ipcountry"),
    HeaderName::from_static("cf-iplatitude"),
    HeaderName::from_static("cf-iplongitude"),
    HeaderName::from_static("cf-metro-code"),
    HeaderName::from_static("cf-postal-code"),
    HeaderName::from_static("cf-pseudo-ipv4"),
    HeaderName::from_static("cf-ray"),
    HeaderName::from_static("cf-region"),
    HeaderName::from_static("cf-region-code"),
    HeaderName::from_static("cf-timezone"),
    HeaderName::from_static("cf-visitor"),
    HeaderName::from_static("cf-worker"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-real-ip"),
];

/// What the front tells a worker about the client and the request, in the
/// headers Cloudflare's edge sets: `Host` is the checked host, the edge's
/// own headers replace whatever the client sent under those names,
/// `X-Forwarded-For` gets the client's address appended (as a proxy does:
/// its last entry is the one to trust), `X-Request-Id` and `CF-Ray` are the
/// node's id for the request.
pub fn set_client_headers(headers: &mut HeaderMap, host: &str, client: IpAddr, scheme: &'static str, request_id: &str) {
    for name in &EDGE_HEADERS {
        headers.remove(name);
    }
    if let Ok(value) = HeaderValue::from_str(host) {
        headers.insert(HOST, value);
    }
    let ip = client.to_string();
    let earlier: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .collect();
    let forwarded_for = if earlier.is_empty() { ip.clone() } else { format!("{}, {ip}", earlier.join(", ")) };
    // `insert` replaces every value the client sent.
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if let Ok(value) = HeaderValue::from_str(&ip) {
        headers.insert(CF_CONNECTING_IP, value.clone());
        headers.insert(X_REAL_IP, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(CF_RAY, value.clone());
        headers.insert(X_REQUEST_ID, value);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const CF_CONNECTING_IP: HeaderName = HeaderName::from_static("cf-connecting-ip");
const CF_RAY: HeaderName = HeaderName::from_static("cf-ray");

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn authorities_are_host_and_port_only() {
        for good in
            ["a.test", "a.test:8080", "127.0.0.1", "127.0.0.1:1", "[::1]", "[::1]:443", "xn--bcher-kva.ch", "a_b"]
        {
            assert!(valid_authority(good), "{good}");
        }
        for bad in [
            "",
            "b.test/vault#",
            "user@a.test",
            "a.test:",
            "a.test:99999",
            "a.test:80:80",
            "a.test?x",
            "a.test#x",
            "a%2ftest",
            "[::1",
            "[nope]",
            "[::1]x",
            ":80",
            "a test",
            "a\\b",
        ] {
            assert!(!valid_authority(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_host_comes_from_one_valid_source() {
        let v11 = http::Version::HTTP_11;
        let local = || "127.0.0.1:80".to_string();
        assert_eq!(request_host(v11, None, &headers(&[("host", "a.test")]), local), Ok("a.test".into()));
        assert_eq!(request_host(v11, None, &headers(&[]), local), Err(HeadError::MissingHost));
        assert_eq!(
            request_host(v11, None, &headers(&[("host", "a.test"), ("host", "b.test")]), local),
            Err(HeadError::DuplicateHost)
        );
        assert_eq!(request_host(v11, None, &headers(&[("host", "b.test/vault#")]), local), Err(HeadError::InvalidHost));
        assert_eq!(request_host(v11, None, &headers(&[("host", "user@a.test")]), local), Err(HeadError::InvalidHost));
        assert_eq!(request_host(http::Version::HTTP_10, None, &headers(&[]), local), Ok("127.0.0.1:80".into()));
        // HTTP/2's :authority (or an absolute-form target) wins over Host.
        let v2 = http::Version::HTTP_2;
        assert_eq!(request_host(v2, Some("a.test"), &headers(&[("host", "b.test")]), local), Ok("a.test".into()));
        assert_eq!(request_host(v2, Some("u@a.test"), &headers(&[]), local), Err(HeadError::InvalidHost));
    }

    #[test]
    fn dot_segments_are_removed_as_a_url_parser_would() {
        for (target, normal) in [
            ("/", "/"),
            ("/a/b?x=../y", "/a/b?x=../y"),
            ("/x/../admin", "/admin"),
            ("/x/./y", "/x/y"),
            ("/../../etc", "/etc"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/b/../../c?q", "/c?q"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/.%2E/b", "/b"),
            ("/a/%2e/b", "/a/b"),
            ("/x\\..\\admin", "/admin"),
            ("/a//b/../c", "/a//c"),
        ] {
            assert_eq!(normalize_target(target), normal, "{target}");
        }
    }

    #[test]
    fn client_values_of_the_edge_headers_are_replaced() {
        let mut map = headers(&[
            ("cf-ray", "forged"),
            ("cf-ipcountry", "US"),
            ("CF-Connecting-IP", "1.2.3.4"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-request-id", "forged-id"),
            ("x-real-ip", "1.2.3.4"),
            ("cf-access-client-id", "service-token"),
            ("host", "forged.test"),
            ("host", "again.test"),
            ("accept", "*/*"),
        ]);
        set_client_headers(&mut map, "a.test", "192.0.2.7".parse().unwrap(), "https", "abc123");
        assert_eq!(map["cf-ray"], "abc123");
        assert!(map.get("cf-ipcountry").is_none());
        assert_eq!(map["cf-connecting-ip"], "192.0.2.7");
        assert_eq!(map["x-real-ip"], "192.0.2.7");
        assert_eq!(map["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(map["x-request-id"], "abc123");
        assert_eq!(map["accept"], "*/*");
        assert_eq!(map["cf-access-client-id"], "service-token", "a client's own cf-* header stays");
        assert_eq!(map.get_all("host").iter().collect::<Vec<_>>(), ["a.test"]);
        let mut fresh = headers(&[]);
        set_client_headers(&mut fresh, "b.test:8080", "::1".parse().unwrap(), "http", "id");
        assert_eq!(fresh["host"], "b.test:8080");
        assert_eq!(fresh["x-forwarded-for"], "::1");
    }
}
