//! Whether a request comes from the edge's own pages (cross-site request
//! forgery).
//!
//! A browser attaches the token cookie by itself to any request for this
//! site, whichever page made it: a page on another port of the same host, or
//! on a sibling subdomain, is "same-site", so even `SameSite=Strict` sends it.
//! So a state-changing call signed in by the cookie must show that the
//! edge's own pages made it: `Origin` (which browsers send with every POST)
//! must be the edge's origin, and `Sec-Fetch-Site` (which they send with
//! every request) must say `same-origin`; at least one of them must be there.
//! It must also carry `Content-Type: application/json`, which no HTML form
//! and no `no-cors` fetch can send. Calls with an `Authorization` header are
//! no browser's doing and are not asked.
//!
//! The edge's origin is the host the request was sent to (`Host`, HTTP/2's
//! `:authority`), or `PUBLIC_ORIGIN` when a gateway in front rewrites the
//! host.

use std::fmt;
use std::str::FromStr;

use http::{HeaderMap, StatusCode, Uri, header};

use rentalbook_plumbing::error::Reason;

use crate::errors::ApiError;

/// Where browsers load the pages from, as they write it in `Origin`:
/// `scheme://host[:port]`, without a default port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicOrigin(String);

impl FromStr for PublicOrigin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            |why: &str| format!("`{s}` is not an origin like https://library.example ({why})");
        let uri: Uri = s.trim().parse().map_err(|_| bad("not a URL"))?;
        let scheme = uri
            .scheme_str()
            .map(str::to_ascii_lowercase)
            .filter(|s| s == "http" || s == "https")
            .ok_or_else(|| bad("http or https"))?;
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
            return Err(bad("an origin has no path"));
        }
        if authority.as_str().contains('@') {
            return Err(bad("an origin has no user"));
        }
        Ok(Self(origin_of(&scheme, authority.as_str())))
    }
}

impl fmt::Display for PublicOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `scheme://authority` lowercased, without the scheme's default port.
fn origin_of(scheme: &str, authority: &str) -> String {
    let authority = authority.to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let authority = authority
        .strip_suffix(default_port)
        .unwrap_or(&authority)
        .to_owned();
    format!("{scheme}://{authority}")
}

/// The authority the request was sent to (`Host`, or HTTP/2's
/// `:authority`).
pub fn request_authority(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    })
}

/// How much a check asks of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// `Origin` or `Sec-Fetch-Site` must be there (a call by the cookie).
    Required,
    /// Each is checked when there (the session endpoints, which `curl` may
    /// call on a laptop).
    WhenPresent,
}

/// Refuses (403) a request that a page of another origin made.
pub fn from_own_pages(
    uri: &Uri,
    headers: &HeaderMap,
    public: Option<&PublicOrigin>,
    evidence: Evidence,
) -> Result<(), ApiError> {
    let origin = headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or(""));
    let fetch_site = headers
        .get("sec-fetch-site")
        .map(|v| v.to_str().unwrap_or(""));
    let refused = |why: String| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            tonic::Code::PermissionDenied,
            format!(
                "a call signed in by the {} cookie must come from this site's own pages: {why}; \
                 other clients send `Authorization: Bearer <token>`",
                crate::request::TOKEN_COOKIE
            ),
        )
        .with_reason(Reason::CrossSiteRequest)
    };
    if evidence == Evidence::Required && origin.is_none() && fetch_site.is_none() {
        return Err(refused(
            "it says neither where it comes from (Origin) nor whether it is the site's own \
             (Sec-Fetch-Site)"
                .to_owned(),
        ));
    }
    if let Some(site) = fetch_site
        && !site.eq_ignore_ascii_case("same-origin")
    {
        return Err(refused(format!("Sec-Fetch-Site is `{site}`")));
    }
    if let Some(origin) = origin {
        let ours = match public {
            Some(public) => Some(public.0.clone()),
            None => {
                let scheme = origin.split_once("://").map_or("", |(s, _)| s);
                request_authority(uri, headers)
                    .map(|host| origin_of(&scheme.to_ascii_lowercase(), &host))
            }
        };
        let theirs = origin
            .split_once("://")
            .map(|(scheme, authority)| origin_of(&scheme.to_ascii_lowercase(), authority));
        if theirs.is_none() || theirs != ours {
            return Err(refused(format!(
                "Origin `{origin}` is not {}",
                ours.map_or_else(|| "this site".to_owned(), |o| format!("`{o}`"))
            )));
        }
    }
    Ok(())
}

/// Refuses (415) a body that is not declared as JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = declared.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        tonic::Code::InvalidArgument,
        format!(
            "a call signed in by the cookie must send JSON (Content-Type: application/json), \
             not `{}`",
            if declared.is_empty() {
                "no Content-Type"
            } else {
                declared
            }
        ),
    )
    .with_reason(Reason::CrossSiteRequest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn check(pairs: &[(&str, &str)], public: Option<&str>, evidence: Evidence) -> Result<(), u16> {
        let public = public.map(|p| p.parse::<PublicOrigin>().unwrap());
        from_own_pages(
            &Uri::from_static("/v1/reservations"),
            &headers(pairs),
            public.as_ref(),
            evidence,
        )
        .map_err(|e| e.status.as_u16())
    }

    #[test]
    fn public_origins_parse_into_their_normal_form() {
        let o = |s: &str| s.parse::<PublicOrigin>().map(|o| o.to_string());
        assert_eq!(
            o("https://Library.Example").unwrap(),
            "https://library.example"
        );
        assert_eq!(
            o("https://library.example:443/").unwrap(),
            "https://library.example"
        );
        assert_eq!(o("http://127.0.0.1:8088").unwrap(), "http://127.0.0.1:8088");
        for bad in [
            "library.example",
            "ftp://x",
            "https://x/app",
            "https://x?a=1",
            "https://u@x",
            "",
        ] {
            assert!(o(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_own_origin_passes_and_others_do_not() {
        let host = ("host", "127.0.0.1:8088");
        let required = Evidence::Required;
        assert_eq!(
            check(&[host, ("origin", "http://127.0.0.1:8088")], None, required),
            Ok(())
        );
        assert_eq!(
            check(&[host, ("sec-fetch-site", "same-origin")], None, required),
            Ok(())
        );
        assert_eq!(
            check(&[host, ("origin", "http://127.0.0.1:9000")], None, required),
            Err(403)
        );
        assert_eq!(check(&[host, ("origin", "null")], None, required), Err(403));
        assert_eq!(
            check(&[host, ("sec-fetch-site", "same-site")], None, required),
            Err(403)
        );
        assert_eq!(
            check(&[host, ("sec-fetch-site", "none")], None, required),
            Err(403)
        );
        assert_eq!(check(&[host], None, required), Err(403));
        assert_eq!(check(&[host], None, Evidence::WhenPresent), Ok(()));
        // Behind a gateway that rewrites Host.
        let public = Some("https://library.example");
        let internal = ("host", "edge.rentalbook.svc:8088");
        assert_eq!(
            check(
                &[internal, ("origin", "https://library.example")],
                public,
                required
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &[internal, ("origin", "http://edge.rentalbook.svc:8088")],
                public,
                required
            ),
            Err(403)
        );
        // A default port written out is the same origin.
        assert_eq!(
            check(
                &[
                    ("host", "library.example:443"),
                    ("origin", "https://library.example")
                ],
                None,
                required
            ),
            Ok(())
        );
    }

    #[test]
    fn only_json_passes() {
        let ok = |ct: &str| require_json(&headers(&[("content-type", ct)])).is_ok();
        assert!(ok("application/json"));
        assert!(ok("Application/JSON; charset=utf-8"));
        assert!(!ok("text/plain"));
        assert!(!ok("application/x-www-form-urlencoded"));
        assert!(!ok("multipart/form-data; boundary=x"));
        let e = require_json(&HeaderMap::new()).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(e.message.contains("no Content-Type"), "{}", e.message);
    }
}
