//! The web dashboard, served from the binary.

use crate::App;
use axum::Router;
use std::sync::Arc;

/// Dashboard routes that show data: behind the `read` scope.
pub(crate) fn read_routes() -> Router<Arc<App>> {
    Router::new()
}

/// Dashboard routes open to all: the page shell, its assets and the login form.
pub(crate) fn open_routes() -> Router<Arc<App>> {
    Router::new()
}
