//! Who may open the inspector. It shows customers' messages, so it is for the machine `serve` runs on:
//!
//! - listening on a loopback address without a token, it is open to requests made on this machine: the
//!   `Host` must be a loopback name (a page on another site cannot reach it through DNS rebinding) and the
//!   request must not have come through a proxy or a tunnel (`Forwarded`, `X-Forwarded-For`,
//!   `X-Real-IP`: a tunnel to the webhook URL would otherwise carry the page to the internet);
//! - listening on any other address, it is off unless a token is given;
//! - with a token, every request must carry it: `Authorization: Bearer <token>`, or the cookie the page
//!   sets when it is opened once as `/?token=<token>`.
//!
//! Requests that change something (replay, redrive) must also carry `X-Inspector: 1` and, when the browser
//! sends an `Origin`, come from the page's own origin: a form or script on another site can do neither.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap, Method};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// The cookie that carries the token after the page was opened with `?token=`, named after the port
/// (cookies are not kept apart by port: two `serve`s on one host keep theirs apart by name).
pub fn cookie_name(port: u16) -> String {
    format!("inspector_token_{port}")
}

/// Headers a proxy, a tunnel or a CDN adds to what it passes on.
const PROXY_HEADERS: [&str; 11] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    "via",
    "cf-connecting-ip",
    "true-client-ip",
    "x-client-ip",
    "fastly-client-ip",
];

/// The header a state-changing request must carry.
pub const ACTION_HEADER: &str = "x-inspector";

/// How the inspector is reached.
#[derive(Clone)]
pub enum Access {
    /// Open to requests from this machine.
    Loopback,
    /// Every request carries the token (in a header, the query, or the cookie named here).
    Token { token: SecretString, cookie: String },
    /// Off: `serve` listens on a non-loopback address and no token was given.
    Off { listen: SocketAddr },
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Off on this listener; the message says how to turn it on.
    Off(String),
    /// No token, or the wrong one.
    Token,
    /// Not from this machine (a proxy's or a tunnel's request, or a foreign `Host`).
    NotLocal(String),
    /// A state-changing request without the action header, or from another origin.
    CrossSite(String),
}

impl Refusal {
    pub fn status(&self) -> axum::http::StatusCode {
        match self {
            Refusal::Token => axum::http::StatusCode::UNAUTHORIZED,
            _ => axum::http::StatusCode::FORBIDDEN,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Off(_) => "inspector_off",
            Refusal::Token => "inspector_token_required",
            Refusal::NotLocal(_) => "inspector_not_local",
            Refusal::CrossSite(_) => "inspector_cross_site",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::Off(why) | Refusal::NotLocal(why) | Refusal::CrossSite(why) => why.clone(),
            Refusal::Token => "the inspector needs its token: open /?token=<token> once, or send \
                               Authorization: Bearer <token>"
                .into(),
        }
    }
}

impl Access {
    /// The access for a server listening on `listen`, with the token if one was given.
    pub fn for_listener(listen: SocketAddr, token: Option<SecretString>) -> Self {
        match token {
            Some(token) => Access::Token {
                token,
                cookie: cookie_name(listen.port()),
            },
            None if listen.ip().is_loopback() => Access::Loopback,
            None => Access::Off { listen },
        }
    }

    /// One line for the banner.
    pub fn describe(&self, address: SocketAddr) -> String {
        match self {
            Access::Loopback => format!("http://{address}/"),
            Access::Token { .. } => format!("http://{address}/ (open it once as /?token=<your token>)"),
            Access::Off { listen } => format!(
                "off: {listen} is not a loopback address; give --inspector-token (or INSPECTOR_TOKEN) to turn it on"
            ),
        }
    }

    /// Whether this request may be answered. `query_token` is the `token` query parameter, if any.
    pub fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<(), Refusal> {
        match self {
            Access::Off { listen } => {
                return Err(Refusal::Off(format!(
                "the inspector is off: serve listens on {listen}, which is not a loopback address, and was \
                     given no --inspector-token"
            )))
            }
            Access::Token { token, cookie: name } => {
                // Any credential given may be the right one: an old cookie must not hide a new token.
                let given = query_token
                    .into_iter()
                    .chain(bearer(headers))
                    .chain(cookies(headers, name));
                let expected = token.expose_secret().as_bytes();
                let mut matches = false;
                for candidate in given {
                    matches |= bool::from(candidate.as_bytes().ct_eq(expected));
                }
                if !matches {
                    return Err(Refusal::Token);
                }
            }
            Access::Loopback => local_only(headers)?,
        }
        if !is_safe(method) {
            same_origin_action(headers)?;
        }
        Ok(())
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The request came straight from this machine, to a loopback name.
fn local_only(headers: &HeaderMap) -> Result<(), Refusal> {
    for name in PROXY_HEADERS {
        if headers.contains_key(name) {
            return Err(Refusal::NotLocal(format!(
                "the inspector answers requests made on this machine only, and this one came through a proxy \
                 or a tunnel ({name}); give serve an --inspector-token to open it from elsewhere"
            )));
        }
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !is_loopback_host(host) {
        return Err(Refusal::NotLocal(
            "the inspector answers requests addressed to a loopback name (localhost, 127.0.0.1, [::1]) only"
                .into(),
        ));
    }
    Ok(())
}

/// `localhost`, `*.localhost`, a 127.0.0.0/8 address or `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, _)) => inside,
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        })
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn same_origin_action(headers: &HeaderMap) -> Result<(), Refusal> {
    if headers.get(ACTION_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return Err(Refusal::CrossSite(format!(
            "an action needs the {ACTION_HEADER}: 1 header (the page sends it)"
        )));
    }
    // A browser says whether the request comes from the page's own origin; behind a TLS proxy that
    // rewrites `Host`, that is the answer to trust rather than comparing `Origin` with `Host`.
    let same_origin = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"same-origin");
    if let (Some(origin), false) = (headers.get(header::ORIGIN), same_origin) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin = origin.to_str().unwrap_or_default();
        let own = host.is_some_and(|host| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(host)
        });
        if !own {
            return Err(Refusal::CrossSite(
                "an action must come from the inspector's own page".into(),
            ));
        }
    }
    Ok(())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Every value of the cookie `name`.
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn listeners_on_other_addresses_are_off_without_a_token() {
        for listen in ["0.0.0.0:8080", "[::]:8080", "192.168.1.20:8080", "10.0.0.5:80"] {
            let access = Access::for_listener(listen.parse().unwrap(), None);
            let refused = access
                .check(&Method::GET, &headers(&[("host", "127.0.0.1:8080")]), None)
                .unwrap_err();
            assert_eq!(refused.code(), "inspector_off", "{listen}");
            assert!(refused.message().contains("--inspector-token"), "{listen}");
        }
        for listen in ["127.0.0.1:8080", "127.0.0.2:9", "[::1]:8080"] {
            let access = Access::for_listener(listen.parse().unwrap(), None);
            assert!(matches!(access, Access::Loopback), "{listen}");
        }
    }

    #[test]
    fn a_token_must_match_in_a_header_a_cookie_or_the_query() {
        let access = Access::for_listener("0.0.0.0:8080".parse().unwrap(), Some("s3cret-token".into()));
        let host = ("host", "203.0.113.9:8080");
        assert_eq!(
            access.check(&Method::GET, &headers(&[host]), None),
            Err(Refusal::Token)
        );
        for wrong in [
            "Bearer s3cret",
            "Bearer s3cret-token2",
            "s3cret-token",
            "Basic s3cret-token",
        ] {
            let given = headers(&[host, ("authorization", wrong)]);
            assert_eq!(
                access.check(&Method::GET, &given, None),
                Err(Refusal::Token),
                "{wrong}"
            );
        }
        let by_header = headers(&[host, ("authorization", "Bearer s3cret-token")]);
        assert_eq!(access.check(&Method::GET, &by_header, None), Ok(()));
        let by_cookie = headers(&[host, ("cookie", "a=b; inspector_token_8080=s3cret-token")]);
        assert_eq!(access.check(&Method::GET, &by_cookie, None), Ok(()));
        // Another port's cookie is not this one's; a stale cookie does not hide the right token.
        let other_port = headers(&[host, ("cookie", "inspector_token_9090=s3cret-token")]);
        assert_eq!(access.check(&Method::GET, &other_port, None), Err(Refusal::Token));
        let stale = headers(&[
            host,
            (
                "cookie",
                "inspector_token_8080=old-token; inspector_token_8080=s3cret-token",
            ),
        ]);
        assert_eq!(access.check(&Method::GET, &stale, None), Ok(()));
        let stale_cookie = headers(&[host, ("cookie", "inspector_token_8080=old-token")]);
        assert_eq!(
            access.check(&Method::GET, &stale_cookie, Some("s3cret-token")),
            Ok(())
        );
        assert_eq!(
            access.check(&Method::GET, &headers(&[host]), Some("s3cret-token")),
            Ok(())
        );
        // Through a proxy is fine with the token.
        let proxied = headers(&[
            host,
            ("x-forwarded-for", "1.2.3.4"),
            ("cookie", "inspector_token_8080=s3cret-token"),
        ]);
        assert_eq!(access.check(&Method::GET, &proxied, None), Ok(()));
    }

    #[test]
    fn loopback_access_refuses_proxied_requests_and_foreign_hosts() {
        let access = Access::Loopback;
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "localhost",
            "[::1]:8080",
            "app.localhost:3000",
            "127.9.9.9",
        ] {
            assert_eq!(
                access.check(&Method::GET, &headers(&[("host", host)]), None),
                Ok(()),
                "{host}"
            );
        }
        for host in [
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "",
            "[::2]:80",
            "localhost.evil.example",
        ] {
            let refused = access
                .check(&Method::GET, &headers(&[("host", host)]), None)
                .unwrap_err();
            assert_eq!(refused.code(), "inspector_not_local", "{host}");
        }
        for forwarded in PROXY_HEADERS {
            let given = headers(&[("host", "127.0.0.1:8080"), (forwarded, "for=1.2.3.4")]);
            let refused = access.check(&Method::GET, &given, None).unwrap_err();
            assert_eq!(refused.code(), "inspector_not_local", "{forwarded}");
            assert!(refused.message().contains(forwarded));
        }
    }

    #[test]
    fn actions_need_the_header_and_the_page_s_own_origin() {
        let access = Access::Loopback;
        let host = ("host", "127.0.0.1:8080");
        let refused = access.check(&Method::POST, &headers(&[host]), None).unwrap_err();
        assert_eq!(refused.code(), "inspector_cross_site");
        let ok = headers(&[host, ("x-inspector", "1"), ("origin", "http://127.0.0.1:8080")]);
        assert_eq!(access.check(&Method::POST, &ok, None), Ok(()));
        let without_origin = headers(&[host, ("x-inspector", "1")]);
        assert_eq!(access.check(&Method::POST, &without_origin, None), Ok(()));
        for origin in ["http://evil.example", "http://127.0.0.1:9999", "null"] {
            let given = headers(&[host, ("x-inspector", "1"), ("origin", origin)]);
            let refused = access.check(&Method::POST, &given, None).unwrap_err();
            assert_eq!(refused.code(), "inspector_cross_site", "{origin}");
            let cross_site = headers(&[
                host,
                ("x-inspector", "1"),
                ("origin", origin),
                ("sec-fetch-site", "cross-site"),
            ]);
            assert!(
                access.check(&Method::POST, &cross_site, None).is_err(),
                "{origin}"
            );
        }
        // Behind a TLS proxy that rewrites Host, the browser's own word that the request is same-origin.
        let proxied = headers(&[
            host,
            ("x-inspector", "1"),
            ("origin", "https://inspect.example"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(access.check(&Method::POST, &proxied, None), Ok(()));
    }
}
