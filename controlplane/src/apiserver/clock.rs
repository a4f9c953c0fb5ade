//! `POST /skiff/v1/clock` (admin only, as every path outside the resource API is): moves
//! the controllers' fake clock forward, for end-to-end tests of time-driven controllers
//! (CronJobs). The body is `{"advanceSeconds": N}` or `{"time": "RFC3339"}`; the answer
//! is `{"time": "RFC3339"}`, the clock's new reading. Without `skiff server
//! --fake-clock` the path does not exist (404), so a production server cannot be
//! time-travelled.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::request::{parse_json, read_body};
use crate::error::{ApiError, ApiResult};
use crate::objects;
use crate::state::SharedApi;

pub(super) async fn advance(
    State(api): State<SharedApi>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    if !api.clock.is_fake() {
        return Err(ApiError::NoRoute);
    }
    let bytes = read_body(&headers, body, api.config.max_body_bytes).await?;
    let request = parse_json(&bytes)?;
    let moved = if let Some(secs) = request.get("advanceSeconds") {
        let secs = secs
            .as_i64()
            .filter(|s| *s >= 0)
            .ok_or_else(|| bad("advanceSeconds must be a non-negative integer"))?;
        api.clock.advance(jiff::SignedDuration::from_secs(secs))
    } else if let Some(time) = request.get("time") {
        let time = time
            .as_str()
            .and_then(objects::parse_time)
            .ok_or_else(|| bad("time must be an RFC3339 timestamp"))?;
        api.clock.set(time)
    } else {
        return Err(bad(
            "expected {\"advanceSeconds\": N} or {\"time\": RFC3339}",
        ));
    };
    let now = moved.map_err(|e| bad(&e.to_string()))?;
    tracing::info!(now = %now, "the fake clock moved");
    Ok(Json(json!({"time": objects::format_time(now)})))
}

fn bad(message: &str) -> ApiError {
    ApiError::BadRequest(message.to_string())
}
