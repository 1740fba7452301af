//! The one HTTP error type: it alone chooses status codes. Bodies are small JSON objects and never
//! echo request content (which may hold secrets).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An HTTP-level failure (not a deny: denies are 200 answers in each broker's dialect).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input; the message names the problem, never the value.
    #[error("{0}")]
    BadRequest(String),
    /// Body larger than the limit.
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// Missing or wrong internal secret.
    #[error("unauthorized")]
    Unauthorized,
    /// No such endpoint.
    #[error("not found")]
    NotFound,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}
