//! Routes: which target (a worker) serves a host and path. Pure data and
//! matching, no I/O; the node swaps whole tables when routes change.
//!
//! A pattern is `host/path`, as Cloudflare writes routes:
//! - host: `api.example.com` (that host), `*.example.com` (its subdomains,
//!   not `example.com` itself), or `*` (any host);
//! - path: `/static/*` (a prefix) or `/health` (that path only); a pattern
//!   without a path is `/*`.
//!
//! The most specific matching route wins: an exact host before a wildcard
//! host (a longer suffix before a shorter one) before `*`; then a longer
//! path before a shorter one, an exact path before a prefix of the same
//! length.

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("route {0:?}: the host is empty")]
    EmptyHost(String),
    #[error("route {0:?}: `*` may only start a host (`*.example.com`) or end a path (`/static/*`)")]
    MisplacedWildcard(String),
    #[error("route {0:?} is given twice")]
    Duplicate(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.suffix`: stored as `.suffix`.
    Subdomains(String),
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathPattern {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone)]
struct Route<T> {
    pattern: String,
    host: HostPattern,
    path: PathPattern,
    target: T,
}

impl<T> Route<T> {
    /// Larger is more specific.
    fn specificity(&self) -> (u8, usize, usize, u8) {
        let (host_rank, host_len) = match &self.host {
            HostPattern::Exact(host) => (2, host.len()),
            HostPattern::Subdomains(suffix) => (1, suffix.len()),
            HostPattern::Any => (0, 0),
        };
        let (path_len, exact) = match &self.path {
            PathPattern::Exact(path) => (path.len(), 1),
            PathPattern::Prefix(prefix) => (prefix.len(), 0),
        };
        (host_rank, host_len, path_len, exact)
    }

    fn matches(&self, host: &str, path: &str) -> bool {
        let host_ok = match &self.host {
            HostPattern::Exact(exact) => host == exact,
            HostPattern::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            HostPattern::Any => true,
        };
        host_ok
            && match &self.path {
                PathPattern::Exact(exact) => path == exact,
                PathPattern::Prefix(prefix) => path.starts_with(prefix.as_str()),
            }
    }
}

/// A routing table, most specific route first.
#[derive(Debug, Clone)]
pub struct Routes<T> {
    routes: Vec<Route<T>>,
}

impl<T> Default for Routes<T> {
    fn default() -> Self {
        Routes { routes: Vec::new() }
    }
}

/// The host a request names, as routes compare it: lowercase, no port, no
/// trailing dot.
pub fn normalize_host(host: &str) -> String {
    let without_port = match host.rsplit_once(':') {
        // An IPv6 literal keeps its colons inside brackets.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => name,
        _ => host,
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

impl<T> Routes<T> {
    /// Builds a table from `(pattern, target)` pairs.
    pub fn new(routes: impl IntoIterator<Item = (String, T)>) -> Result<Self, RouteError> {
        let mut parsed: Vec<Route<T>> = Vec::new();
        for (pattern, target) in routes {
            let (host, path) = parse(&pattern)?;
            if parsed.iter().any(|route| route.host == host && route.path == path) {
                return Err(RouteError::Duplicate(pattern));
            }
            parsed.push(Route { pattern, host, path, target });
        }
        parsed.sort_by(|a, b| b.specificity().cmp(&a.specificity()).then_with(|| a.pattern.cmp(&b.pattern)));
        Ok(Routes { routes: parsed })
    }

    /// The target of the most specific route matching `host` (as the client
    /// sent it) and `path`.
    pub fn find(&self, host: &str, path: &str) -> Option<&T> {
        let host = normalize_host(host);
        self.routes.iter().find(|route| route.matches(&host, path)).map(|route| &route.target)
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The patterns, most specific first.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|route| route.pattern.as_str())
    }
}

fn parse(pattern: &str) -> Result<(HostPattern, PathPattern), RouteError> {
    let text = pattern.trim();
    let text = text.strip_prefix("https://").or_else(|| text.strip_prefix("http://")).unwrap_or(text);
    let (host, path) = match text.find('/') {
        Some(slash) => (&text[..slash], &text[slash..]),
        None => (text, "/*"),
    };
    if host.is_empty() {
        return Err(RouteError::EmptyHost(pattern.to_string()));
    }
    let host = host.to_ascii_lowercase();
    let host = if host == "*" {
        HostPattern::Any
    } else if let Some(suffix) = host.strip_prefix("*.") {
        if suffix.is_empty() || suffix.contains('*') {
            return Err(RouteError::MisplacedWildcard(pattern.to_string()));
        }
        HostPattern::Subdomains(format!(".{suffix}"))
    } else if host.contains('*') {
        return Err(RouteError::MisplacedWildcard(pattern.to_string()));
    } else {
        HostPattern::Exact(host)
    };
    let path = match path.strip_suffix('*') {
        Some(prefix) if !prefix.contains('*') => PathPattern::Prefix(prefix.to_string()),
        Some(_) => return Err(RouteError::MisplacedWildcard(pattern.to_string())),
        None if path.contains('*') => return Err(RouteError::MisplacedWildcard(pattern.to_string())),
        None => PathPattern::Exact(path.to_string()),
    };
    Ok((host, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str)]) -> Routes<String> {
        Routes::new(routes.iter().map(|(p, t)| (p.to_string(), t.to_string()))).unwrap()
    }

    #[test]
    fn most_specific_route_wins() {
        let routes = table(&[
            ("*/*", "fallback"),
            ("*.example.com/*", "sites"),
            ("*.example.com/static/*", "static"),
            ("api.example.com/*", "api"),
            ("api.example.com/v2/*", "api-v2"),
            ("api.example.com/health", "health"),
        ]);
        let find = |host, path| routes.find(host, path).map(String::as_str);
        assert_eq!(find("api.example.com", "/users"), Some("api"));
        assert_eq!(find("api.example.com", "/v2/users"), Some("api-v2"));
        assert_eq!(find("API.Example.com:8443", "/health"), Some("health"));
        assert_eq!(find("api.example.com", "/health/deep"), Some("api"));
        // An exact host beats a wildcard host with a longer path.
        assert_eq!(find("api.example.com", "/static/app.js"), Some("api"));
        assert_eq!(find("www.example.com", "/static/app.js"), Some("static"));
        assert_eq!(find("www.example.com", "/"), Some("sites"));
        // `*.example.com` is subdomains only.
        assert_eq!(find("example.com", "/"), Some("fallback"));
        assert_eq!(find("other.org", "/x"), Some("fallback"));
    }

    #[test]
    fn no_match_is_none() {
        let routes = table(&[("api.example.com/*", "api")]);
        assert_eq!(routes.find("web.example.com", "/"), None);
        assert_eq!(routes.find("notexample.com", "/"), None);
    }

    #[test]
    fn patterns_are_checked() {
        let parse_err = |p: &str| Routes::new([(p.to_string(), ())]).unwrap_err();
        assert!(matches!(parse_err("/path"), RouteError::EmptyHost(_)));
        assert!(matches!(parse_err("api.*.com/*"), RouteError::MisplacedWildcard(_)));
        assert!(matches!(parse_err("a.com/*/x"), RouteError::MisplacedWildcard(_)));
        let dup = Routes::new([("a.com/*".to_string(), ()), ("A.com/*".to_string(), ())]).unwrap_err();
        assert!(matches!(dup, RouteError::Duplicate(_)));
        // A pattern without a path covers every path; schemes are ignored.
        let routes = table(&[("https://a.com", "a")]);
        assert_eq!(routes.find("a.com", "/deep/path").map(String::as_str), Some("a"));
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8443"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
    }
}
