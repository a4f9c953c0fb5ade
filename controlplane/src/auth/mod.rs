//! Who may do what: bearer-token authentication, and authorization as kube-apiserver's
//! `--authorization-mode=Node,RBAC`.
//!
//! - Anonymous requests get 401, except `/healthz`, `/livez`, `/readyz`, `/version`
//!   and `/cacerts` (the CA an agent checks against its join token).
//! - Everyone but nodes is authorized by RBAC (`rbac.rs`): admin tokens are in
//!   `system:masters` (allowed everything), viewer tokens in `skiff:viewers` (bound to
//!   `skiff:viewer`, which reads everything but Secrets), user tokens are a name and
//!   groups; `policy.rs` writes the default roles, `escalation.rs` refuses writes of
//!   roles and bindings that grant more than the writer holds, and `authz.rs` also
//!   handles impersonation.
//! - **node** credentials are restricted as Kubernetes' Node authorizer and
//!   NodeRestriction admission restrict kubelets: the node's own Node and Lease; the pods
//!   bound to it and their status; the ConfigMaps, Secrets and Modules those pods
//!   reference; Events; and reading Endpoints (agents learn the API servers from
//!   `default/kubernetes`, as kubelets may read endpoints). On its own Node a node may
//!   change only the labels a kubelet may (`noderestriction.rs`): never the ones that
//!   make the control plane or a nodeSelector trust it.
//! - **join** tokens may only trade themselves for a node credential (`POST /skiff/v1/join`).
//! - **ServiceAccounts** authenticate with JWTs the API issues (TokenRequest); until RBAC
//!   binds them to roles they may read discovery and the issuer's OIDC documents and ask
//!   who they are (SelfSubjectReview), which every signed-in identity may. A node may
//!   also get the ServiceAccounts its pods run as, and tokens bound to those pods.
//!
//! Tokens live in the store as token records (`tokens.rs`), outside every served kind:
//! deleting objects cannot lock anyone out, and `skiff token revoke` takes effect on the
//! next request.
//!
//! `authn.rs` authenticates, `authz.rs` authorizes (and is the middleware in front of
//! the API), `noderestriction.rs` admits a node's writes of its Node, `bootstrap.rs`
//! makes the server's tokens and serves joining, `tokens.rs` keeps the token records, `verified.rs` remembers tokens already
//! verified until their records change, and `pki.rs` makes the cluster's CA
//! and certificates (and the ServiceAccount signing key). `satokens.rs` signs and
//! verifies ServiceAccount tokens, `tokenrequest.rs` serves `serviceaccounts/token`,
//! and `reviews.rs` serves SelfSubjectReview, TokenReview and the OIDC documents.

mod authn;
mod authz;
mod bootstrap;
mod escalation;
mod noderestriction;
pub mod pki;
pub mod policy;
pub mod rbac;
pub mod reviews;
pub mod satokens;
mod tokenrequest;
mod tokens;
mod verified;

pub use authn::{Identity, authenticate};
pub(crate) use authz::may_create;
pub use authz::{NodePods, layer};
pub use bootstrap::{ensure_tokens, routes};
pub use noderestriction::admit;
pub use satokens::{ServiceAccountTokens, SigningKeyError};
pub(crate) use tokenrequest::request_token;
pub use verified::{TokenCache, follow as follow_tokens};
