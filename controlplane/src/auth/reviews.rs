//! What the API tells about identities, served outside the kinds table because nothing
//! of it is stored:
//!
//! - `authentication.k8s.io/v1` SelfSubjectReview (`kubectl auth whoami`): who the
//!   caller is. Every signed-in identity may ask.
//! - `authentication.k8s.io/v1` TokenReview: who a token belongs to (what a webhook or
//!   a relying party asks). Admin only until RBAC grants `create tokenreviews`.
//! - The service-account issuer's OIDC discovery: `/.well-known/openid-configuration`
//!   and `/openid/v1/jwks`, so that others can verify ServiceAccount tokens offline.
//!   Any signed-in identity may read them, as Kubernetes'
//!   `system:service-account-issuer-discovery` role allows by default.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroup, APIResourceList};
use serde_json::{Value, json};

use super::authn::{Identity, service_account};
use super::satokens::{self, ServiceAccountTokens};
use crate::apiserver::json_response;
use crate::error::{ApiError, ApiResult};
use crate::state::SharedApi;

pub const GROUP: &str = "authentication.k8s.io";
pub const VERSION: &str = "v1";
pub const SELF_SUBJECT_REVIEWS: &str = "/apis/authentication.k8s.io/v1/selfsubjectreviews";
pub const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
pub const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";
pub const JWKS: &str = "/openid/v1/jwks";
/// Largest review body read: a token and a few audiences.
const MAX_REVIEW_BYTES: usize = 64 * 1024;

/// The routes of this module; the auth layer in front decides who reaches them.
pub fn routes(api: SharedApi) -> Router {
    Router::new()
        .route(SELF_SUBJECT_REVIEWS, post(self_subject_review))
        .route(TOKEN_REVIEWS, post(token_review))
        .route(OPENID_CONFIGURATION, get(openid_configuration))
        .route(JWKS, get(jwks))
        .with_state(api)
}

/// Discovery's entry for the group, next to the kinds' groups.
pub fn api_group(name: &str) -> Option<APIGroup> {
    (name == GROUP).then(|| crate::apiserver::one_version_group(GROUP, VERSION))
}

/// The group's resources: create-only reviews.
pub fn resource_list(group: &str, version: &str) -> Option<APIResourceList> {
    (group == GROUP && version == VERSION).then(|| {
        crate::apiserver::reviews(
            GROUP,
            VERSION,
            &[
                ("selfsubjectreviews", "SelfSubjectReview", false),
                ("tokenreviews", "TokenReview", false),
            ],
        )
    })
}

/// `status.userInfo` (or `status.user`) of an identity, as Kubernetes' UserInfo.
pub fn user_info(identity: &Identity) -> Value {
    let mut info = json!({"username": identity.user(), "groups": identity.groups()});
    if let Some(uid) = identity.uid() {
        info["uid"] = json!(uid);
    }
    let extra = identity.extra();
    if !extra.is_empty() {
        info["extra"] = Value::Object(extra);
    }
    info
}

async fn read_review(headers: &HeaderMap, body: Body, kind: &str) -> ApiResult<Value> {
    let bytes = crate::apiserver::read_body(headers, body, MAX_REVIEW_BYTES).await?;
    let review = crate::apiserver::parse_body(&bytes)?;
    match review.get("kind").and_then(Value::as_str) {
        Some(k) if k != kind => Err(ApiError::BadRequest(format!(
            "the body must be a {kind}, not a {k}"
        ))),
        _ => Ok(review),
    }
}

fn answer(kind: &str, spec: Option<Value>, status: Value) -> Response {
    let mut out = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": kind,
        "metadata": {"creationTimestamp": crate::objects::now_rfc3339()},
        "status": status,
    });
    if let Some(spec) = spec {
        out["spec"] = spec;
    }
    json_response(StatusCode::CREATED, &out)
}

async fn self_subject_review(
    identity: Option<axum::Extension<Identity>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let identity = identity.map(|e| e.0).unwrap_or(Identity::Anonymous);
        read_review(&headers, body, "SelfSubjectReview").await?;
        Ok::<_, ApiError>(answer(
            "SelfSubjectReview",
            None,
            json!({"userInfo": user_info(&identity)}),
        ))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn token_review(State(api): State<SharedApi>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let review = read_review(&headers, body, "TokenReview").await?;
        let token = review
            .pointer("/spec/token")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if token.is_empty() {
            return Err(ApiError::Invalid(
                crate::error::Subject::virtual_resource(GROUP, "tokenreviews", "TokenReview", ""),
                vec![crate::kinds::fields::required("spec.token")],
            ));
        }
        let audiences = satokens::audiences_of(review.pointer("/spec/audiences"));
        // Skiff's own tokens are the API's, and only ServiceAccount tokens carry
        // audiences; a review of another kind of token reports who it is for the API.
        let status = if satokens::looks_like_jwt(token) {
            match service_account(&api, token, &audiences).await {
                Ok(identity) => json!({
                    "authenticated": true,
                    "user": user_info(&identity),
                    "audiences": if audiences.is_empty() { vec![satokens::ISSUER.to_string()] } else { audiences },
                }),
                Err(e) => json!({"authenticated": false, "error": e.to_string()}),
            }
        } else {
            let mut headers = HeaderMap::new();
            let bearer = format!("Bearer {token}");
            if let Ok(v) = axum::http::HeaderValue::from_str(&bearer) {
                headers.insert(axum::http::header::AUTHORIZATION, v);
            }
            match super::authn::authenticate(&api, &headers).await {
                Ok(identity) if identity != Identity::Anonymous => json!({
                    "authenticated": true,
                    "user": user_info(&identity),
                    "audiences": [satokens::ISSUER],
                }),
                _ => json!({"authenticated": false, "error": "invalid bearer token"}),
            }
        };
        Ok(answer("TokenReview", review.get("spec").cloned(), status))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn openid_configuration(State(api): State<SharedApi>) -> Response {
    let jwks_uri = format!("https://{}{JWKS}", api.config.advertise_address);
    json_response(
        StatusCode::OK,
        &ServiceAccountTokens::openid_configuration(&jwks_uri),
    )
}

async fn jwks(State(api): State<SharedApi>) -> Response {
    let mut response = json_response(StatusCode::OK, &api.service_accounts.jwks());
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/jwk-set+json"),
    );
    response
}
