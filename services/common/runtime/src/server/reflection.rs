//! Server reflection (`grpc.reflection.v1` and `v1alpha`) narrowed to the services served.

/// Server reflection in both protocol versions, listing the dispatch services in `served` plus
/// health and reflection itself: `grpc.reflection.v1` (grpcurl, grpcui, Rust clients) and
/// `grpc.reflection.v1alpha` (Python's grpcio-reflection, older grpcurl, Postman, k6's `reflect`
/// still speak only this one).
///
/// Every server embeds the whole dispatch.v1 descriptor set, so any symbol resolves; only the
/// list is narrowed to `served`, because a client that lists a service expects to call it (the
/// gateway once listed TaskQueryService and AdminService and answered UNIMPLEMENTED).
///
/// # Errors
/// An embedded descriptor set does not decode (a build problem).
pub fn reflection_services(
    served: &[&str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    use tonic_reflection::pb::{v1, v1alpha};
    let always = [
        tonic_health::pb::health_server::SERVICE_NAME,
        v1::server_reflection_server::SERVICE_NAME,
        v1alpha::server_reflection_server::SERVICE_NAME,
    ];
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(dispatch_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(v1alpha::FILE_DESCRIPTOR_SET);
        for name in served.iter().chain(&always) {
            b = b.with_service_name(*name);
        }
        b
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
