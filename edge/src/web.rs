//! The web pages (SPEC §6: static pages are open, `/v1/...` needs
//! credentials): plain HTML, CSS and JavaScript modules from `web/`, compiled
//! into the binary so that a plain `cargo run` serves them with no build step.
//!
//! Every page goes out with a strict Content-Security-Policy (this origin
//! only: no inline script or style, no framing, no plugins), `nosniff`, and
//! `Cache-Control: no-cache` with a strong ETag: the paths carry no version,
//! so browsers revalidate and get a 304 while nothing changed.

use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::errors::ApiError;

/// The policy of every page: scripts, styles, images, fonts and connections
/// (fetch, EventSource) from this origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
     manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../web/", $file)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JSON: &str = "application/json";

/// Every file under `web/` the pages use, by the path it is served at.
pub static ASSETS: &[Asset] = &[
    asset!("/", "index.html", HTML),
    asset!("/index.html", "index.html", HTML),
    asset!("/app.js", "app.js", JS),
    asset!("/api.js", "api.js", JS),
    asset!("/i18n.js", "i18n.js", JS),
    asset!("/views.js", "views.js", JS),
    asset!("/style.css", "style.css", CSS),
    asset!("/i18n/en.json", "i18n/en.json", JSON),
    asset!("/i18n/ko.json", "i18n/ko.json", JSON),
    asset!("/favicon.svg", "favicon.svg", "image/svg+xml"),
];

/// Each asset's ETag, a hash of its bytes, computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            a.body.hash(&mut h);
            HeaderValue::from_str(&format!("\"{:016x}\"", h.finish()))
                .expect("hex is a valid header value")
        })
        .collect()
});

/// The asset served at `path`, if any.
pub fn find(path: &str) -> Option<usize> {
    ASSETS.iter().position(|a| a.path == path)
}

/// Answers a request for the asset at `index`: GET and HEAD only, 304 when
/// the browser's copy is current.
pub fn serve(index: usize, method: &Method, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    if method != Method::GET && method != Method::HEAD {
        return ApiError::method_not_allowed(method, asset.path, vec![Method::GET, Method::HEAD])
            .into_response();
    }
    let etag = &ETAGS[index];
    let current = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/").as_bytes() == etag.as_bytes()
        });
    let mut res = if current {
        StatusCode::NOT_MODIFIED.into_response()
    } else if method == Method::HEAD {
        let mut res = StatusCode::OK.into_response();
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(asset.body.len()));
        res
    } else {
        (StatusCode::OK, Body::from(asset.body)).into_response()
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    page_security_headers(h);
    res
}

/// The headers every page and the session endpoints carry.
pub fn page_security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_and_the_page_names_only_embedded_files() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{} is empty", a.path);
        }
        let index = std::str::from_utf8(ASSETS[find("/").unwrap()].body).unwrap();
        for needed in ["/app.js", "/style.css", "/favicon.svg"] {
            assert!(index.contains(needed), "index.html does not use {needed}");
        }
        // Each module the scripts import is served.
        for a in ASSETS.iter().filter(|a| a.content_type == JS) {
            let text = std::str::from_utf8(a.body).unwrap();
            for rest in text.split(" from '").skip(1) {
                let spec = rest.split('\'').next().unwrap();
                let path = spec.trim_start_matches('.');
                assert!(
                    find(path).is_some(),
                    "{} imports {spec}, not served",
                    a.path
                );
            }
        }
        // No inline script or style: the policy would block them.
        assert!(!index.contains("<script>") && !index.contains("style="));
        assert!(!index.contains("<style"));
    }

    #[test]
    fn pages_carry_the_policy_and_revalidate() {
        let i = find("/").unwrap();
        let res = serve(i, &Method::GET, &HeaderMap::new());
        assert_eq!(res.status(), StatusCode::OK);
        let h = res.headers();
        assert_eq!(h[header::CONTENT_TYPE], HTML);
        assert!(
            h[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        let etag = h[header::ETAG].clone();

        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        let res = serve(i, &Method::GET, &again);
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);

        let res = serve(i, &Method::POST, &HeaderMap::new());
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(find("/nowhere.js").is_none());
    }
}
