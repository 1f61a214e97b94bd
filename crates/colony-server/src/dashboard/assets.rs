//! The files the page loads, embedded in the binary: htmx and uPlot (vendored, see
//! `assets/VENDORED.md`) and the dashboard's own script, style sheet and icon.
//!
//! The page asks for each with `?v=` and a hash of them all, so a browser may keep them for a
//! year: a new binary with different files gives the page new addresses.

use axum::{
    extract::Path,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use std::{
    hash::{Hash, Hasher},
    sync::OnceLock,
};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const ASSETS: [Asset; 7] = [
    Asset {
        name: "htmx.min.js",
        content_type: JS,
        body: include_bytes!("assets/htmx.min.js"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: JS,
        body: include_bytes!("assets/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: CSS,
        body: include_bytes!("assets/uPlot.min.css"),
    },
    Asset {
        name: "dashboard.js",
        content_type: JS,
        body: include_bytes!("assets/dashboard.js"),
    },
    Asset {
        name: "cluster.js",
        content_type: JS,
        body: include_bytes!("assets/cluster.js"),
    },
    Asset {
        name: "dashboard.css",
        content_type: CSS,
        body: include_bytes!("assets/dashboard.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/favicon.svg"),
    },
];

/// A hash of every asset: the `?v=` of their addresses. (Stable within one binary, which is
/// all a cache needs.)
pub(super) fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for asset in &ASSETS {
            asset.name.hash(&mut hasher);
            asset.body.hash(&mut hasher);
        }
        format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
    })
}

/// `GET /assets/{name}`.
pub(super) async fn serve(Path(name): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return crate::problem(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("there is no asset {name:?}"),
        );
    };
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        asset.body,
    )
        .into_response()
}
