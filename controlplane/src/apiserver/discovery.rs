//! Discovery (`/api`, `/apis`, the per-group-version resource lists) and `/version`,
//! generated from the resource table so what is served and what is advertised agree.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
    ServerAddressByClientCIDR,
};
use serde_json::json;

use skiff_api::resources::Subresource;

use super::request::json_response;
use super::{authorization_api, metrics_api};
use crate::error::{ApiError, ApiResult};
use crate::state::SharedApi;

const MAIN_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn resource_list(group: &str, version: &str) -> Option<APIResourceList> {
    let mut out = Vec::new();
    for r in crate::kinds::all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
    {
        out.push(APIResource {
            name: r.plural.into(),
            singular_name: r.singular.into(),
            namespaced: r.namespaced,
            kind: r.kind.into(),
            verbs: strings(MAIN_VERBS),
            short_names: (!r.short_names.is_empty()).then(|| strings(r.short_names)),
            categories: (!r.categories.is_empty()).then(|| strings(r.categories)),
            ..Default::default()
        });
        for sub in r.subresources {
            let (kind, group, version, verbs): (&str, Option<&str>, Option<&str>, &[&str]) =
                match sub {
                    Subresource::Status => (r.kind, None, None, &["get", "patch", "update"]),
                    Subresource::Scale => (
                        "Scale",
                        Some("autoscaling"),
                        Some("v1"),
                        &["get", "patch", "update"],
                    ),
                    Subresource::Binding => ("Binding", None, None, &["create"]),
                    Subresource::Log => ("Pod", None, None, &["get"]),
                    Subresource::Eviction => ("Eviction", Some("policy"), Some("v1"), &["create"]),
                    Subresource::Token => (
                        "TokenRequest",
                        Some("authentication.k8s.io"),
                        Some("v1"),
                        &["create"],
                    ),
                    Subresource::PortForward => {
                        ("PodPortForwardOptions", None, None, &["create", "get"])
                    }
                };
            out.push(APIResource {
                name: format!("{}/{}", r.plural, sub.name()),
                singular_name: String::new(),
                namespaced: r.namespaced,
                kind: kind.into(),
                group: group.map(str::to_string),
                version: version.map(str::to_string),
                verbs: strings(verbs),
                ..Default::default()
            });
        }
    }
    (!out.is_empty()).then(|| APIResourceList {
        group_version: if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        },
        resources: out,
    })
}

/// A group served at one version, for the groups served outside the kinds table (the
/// metrics APIs and the review APIs).
pub(crate) fn one_version_group(name: &str, version: &str) -> APIGroup {
    let gv = GroupVersionForDiscovery {
        group_version: format!("{name}/{version}"),
        version: version.into(),
    };
    APIGroup {
        name: name.into(),
        preferred_version: Some(gv.clone()),
        server_address_by_client_cidrs: None,
        versions: vec![gv],
    }
}

/// The resources of a group of reviews: each `(plural, kind, namespaced)`, create only.
pub(crate) fn reviews(
    group: &str,
    version: &str,
    reviews: &[(&str, &str, bool)],
) -> APIResourceList {
    APIResourceList {
        group_version: format!("{group}/{version}"),
        resources: reviews
            .iter()
            .map(|(plural, kind, namespaced)| APIResource {
                name: plural.to_string(),
                singular_name: kind.to_lowercase(),
                namespaced: *namespaced,
                kind: kind.to_string(),
                verbs: vec!["create".into()],
                ..Default::default()
            })
            .collect(),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> ApiResult<Response> {
    let v = serde_json::to_value(value).map_err(ApiError::internal)?;
    Ok(json_response(StatusCode::OK, &v))
}

pub(crate) async fn core_versions(State(api): State<SharedApi>) -> ApiResult<Response> {
    to_json(&APIVersions {
        versions: vec!["v1".into()],
        server_address_by_client_cidrs: vec![ServerAddressByClientCIDR {
            client_cidr: "0.0.0.0/0".into(),
            server_address: api.config.advertise_address.clone(),
        }],
    })
}

pub(crate) async fn core_resources(Path(version): Path<String>) -> ApiResult<Response> {
    to_json(&resource_list("", &version).ok_or(ApiError::NoRoute)?)
}

fn api_group(name: &str) -> Option<APIGroup> {
    let versions: Vec<GroupVersionForDiscovery> = crate::kinds::group_versions()
        .into_iter()
        .filter(|(g, _)| *g == name)
        .map(|(g, v)| GroupVersionForDiscovery {
            group_version: format!("{g}/{v}"),
            version: v.into(),
        })
        .collect();
    let preferred = versions.first().cloned()?;
    Some(APIGroup {
        name: name.into(),
        preferred_version: Some(preferred),
        server_address_by_client_cidrs: None,
        versions,
    })
}

pub(crate) async fn groups() -> ApiResult<Response> {
    let mut names: Vec<&str> = Vec::new();
    for (g, _) in crate::kinds::group_versions() {
        if !g.is_empty() && !names.contains(&g) {
            names.push(g);
        }
    }
    let mut groups: Vec<APIGroup> = names.into_iter().filter_map(api_group).collect();
    groups.extend(
        metrics_api::group_names()
            .into_iter()
            .filter_map(metrics_api::api_group),
    );
    groups.extend(authorization_api::api_group(authorization_api::GROUP));
    groups.extend(crate::auth::reviews::api_group(crate::auth::reviews::GROUP));
    to_json(&APIGroupList { groups })
}

pub(crate) async fn group(Path(name): Path<String>) -> ApiResult<Response> {
    to_json(
        &api_group(&name)
            .or_else(|| metrics_api::api_group(&name))
            .or_else(|| authorization_api::api_group(&name))
            .or_else(|| crate::auth::reviews::api_group(&name))
            .ok_or(ApiError::NoRoute)?,
    )
}

pub(crate) async fn group_resources(
    Path((group, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    to_json(
        &resource_list(&group, &version)
            .or_else(|| metrics_api::resource_list(&group, &version))
            .or_else(|| authorization_api::resource_list(&group, &version))
            .or_else(|| crate::auth::reviews::resource_list(&group, &version))
            .ok_or(ApiError::NoRoute)?,
    )
}

pub(crate) async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": "37",
            "gitVersion": concat!("v1.37.0+skiff-", env!("CARGO_PKG_VERSION")),
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "",
            "goVersion": "n/a (rust)",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else if cfg!(target_arch = "aarch64") { "arm64" } else { std::env::consts::ARCH }),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_list_advertises_subresources_and_short_names() {
        let list = resource_list("", "v1").unwrap();
        let pods = list.resources.iter().find(|r| r.name == "pods").unwrap();
        assert_eq!(pods.short_names.as_deref(), Some(&["po".to_string()][..]));
        assert!(
            list.resources
                .iter()
                .any(|r| r.name == "pods/binding" && r.verbs == ["create"])
        );
        let apps = resource_list("apps", "v1").unwrap();
        let scale = apps
            .resources
            .iter()
            .find(|r| r.name == "deployments/scale")
            .unwrap();
        assert_eq!(scale.group.as_deref(), Some("autoscaling"));
        assert!(resource_list("nope", "v1").is_none());
    }
}
