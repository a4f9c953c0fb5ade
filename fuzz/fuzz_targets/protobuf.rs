//! Kubernetes protobuf request bodies (`k8s\0` + `runtime.Unknown`), decoded as the API
//! server decodes every create and update body (`skiff_controlplane::apiserver::
//! parse_body`, which reads JSON and protobuf alike). It never panics or recurses
//! without bound, a body it refuses is a 400, and one it reads is an object that names
//! its apiVersion and kind.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::protobuf::MAGIC;
use skiff_controlplane::apiserver::parse_body;
use skiff_controlplane::error::ApiError;

skiff_fuzz::cap_allocations!();

fuzz_target!(|data: &[u8]| {
    match parse_body(data) {
        Ok(object) => {
            assert!(object.is_object(), "a body decoded to a non-object");
            if data.starts_with(MAGIC) {
                assert!(object["apiVersion"].is_string() && object["kind"].is_string());
            }
        }
        Err(ApiError::BadRequest(_)) => {}
        Err(e) => panic!("a malformed body is a 400, not {e:?}"),
    }
});
