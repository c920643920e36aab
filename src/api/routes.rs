//! Method and path to a [`VmmAction`], parsing the body on the way, as
//! Firecracker's API does: anything it does not know is a 400 with a
//! `fault_message`, never a 404 or a 5xx.

use serde::de::DeserializeOwned;

use super::action::VmmAction;
use super::http::{Request, Response};
use super::model::{
    parse_body, ActionInfo, ActionType, Drive, NetworkInterface, VersionInfo, VmRunState, VmState,
};
use super::model::{PartialDrive, PartialNetworkInterface};
use super::resources::check_path_id;

/// What a request comes to.
#[derive(Debug, PartialEq)]
pub enum Routed {
    /// Answered on the API thread (a bad request, the version).
    Now(Response),
    /// For the VMM thread.
    Action(VmmAction),
}

/// The Firecracker release whose API kiln serves: what `GET /version`
/// and `firecracker --version` (kiln run through a link of that name)
/// report, since clients compare it with Firecracker's releases.
pub const FIRECRACKER_COMPAT: &str = "1.7.0";

/// kiln's own version (`vmm_version` in `GET /`).
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

fn bad(message: impl std::fmt::Display) -> Routed {
    Routed::Now(Response::fault(400, message.to_string()))
}

fn body<T: DeserializeOwned>(request: &Request, then: impl FnOnce(T) -> Routed) -> Routed {
    if request.body.is_empty() {
        return bad("the request needs a JSON body");
    }
    match parse_body::<T>(&request.body) {
        Ok(value) => then(value),
        Err(e) => bad(e),
    }
}

/// Routes one request.
pub fn route(request: &Request) -> Routed {
    let method = request.method.as_str();
    let path = request.path.trim_end_matches('/');
    let (base, id) = match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((base, id)) => (base, Some(id)),
        None => (path.trim_start_matches('/'), None),
    };
    use VmmAction as A;
    match (method, base, id) {
        ("GET", "", None) => Routed::Action(A::GetInstanceInfo),
        ("GET", "version", None) => {
            let info = VersionInfo {
                firecracker_version: FIRECRACKER_COMPAT.to_string(),
            };
            Routed::Now(Response::json(
                200,
                serde_json::to_string(&info).unwrap_or_default(),
            ))
        }
        ("GET", "machine-config", None) => Routed::Action(A::GetMachineConfig),
        ("PUT", "machine-config", None) => body(request, |c| Routed::Action(A::PutMachineConfig(c))),
        ("PATCH", "machine-config", None) => body(request, |c| Routed::Action(A::PatchMachineConfig(c))),
        ("PUT", "boot-source", None) => body(request, |b| Routed::Action(A::PutBootSource(b))),
        ("PUT", "drives", Some(id)) => body(request, |d: Drive| {
            with_id(id, &d.drive_id, || A::PutDrive(d.clone()))
        }),
        ("PATCH", "drives", Some(id)) => body(request, |d: PartialDrive| {
            with_id(id, &d.drive_id, || A::PatchDrive(d.clone()))
        }),
        ("PUT", "network-interfaces", Some(id)) => body(request, |n: NetworkInterface| {
            with_id(id, &n.iface_id, || A::PutNet(n.clone()))
        }),
        ("PATCH", "network-interfaces", Some(id)) => body(request, |n: PartialNetworkInterface| {
            with_id(id, &n.iface_id, || A::PatchNet(n.clone()))
        }),
        ("PUT", "vsock", None) => body(request, |v| Routed::Action(A::PutVsock(v))),
        ("PUT", "logger", None) => body(request, |l| Routed::Action(A::PutLogger(l))),
        ("PUT", "metrics", None) => body(request, |m| Routed::Action(A::PutMetrics(m))),
        ("PUT", "actions", None) => body(request, |a: ActionInfo| {
            Routed::Action(match a.action_type {
                ActionType::InstanceStart => A::InstanceStart,
                ActionType::SendCtrlAltDel => A::SendCtrlAltDel,
                ActionType::FlushMetrics => A::FlushMetrics,
            })
        }),
        ("PATCH", "vm", None) => body(request, |v: VmState| {
            Routed::Action(match v.state {
                VmRunState::Paused => A::Pause,
                VmRunState::Resumed => A::Resume,
            })
        }),
        _ => bad(format!(
            "Invalid request method and/or path: {method} {}",
            request.path
        )),
    }
}

fn with_id(path_id: &str, body_id: &str, action: impl FnOnce() -> VmmAction) -> Routed {
    if path_id.is_empty() || path_id.contains('/') {
        return bad(format!("{path_id:?} is not an id"));
    }
    match check_path_id(path_id, body_id) {
        Ok(()) => Routed::Action(action()),
        Err(e) => bad(e),
    }
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
