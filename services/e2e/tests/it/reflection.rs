//! Server reflection as a client without the .proto files uses it (grpcurl, grpcui, Postman,
//! k6's `reflect`, Python's grpcio-reflection): every server, over `grpc.reflection.v1` and
//! `grpc.reflection.v1alpha`, lists exactly the services it serves, describes each one, and
//! answers every RPC of every dispatch service it lists (here without credentials:
//! UNAUTHENTICATED, never UNIMPLEMENTED).

use std::collections::BTreeSet;

use dispatch_testkit::stack::{Stack, channel};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

/// Listed by every server next to its own dispatch service.
const ALWAYS: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The two reflection protocol versions; their generated clients have the same shape but
/// distinct types.
#[derive(Debug, Clone, Copy)]
enum Version {
    V1,
    V1alpha,
}

/// What a reflection client asks.
enum Ask {
    ListServices,
    FileContainingSymbol(String),
}

/// What the server answers: service names, or encoded `FileDescriptorProto`s.
#[derive(Debug)]
enum Answer {
    Services(Vec<String>),
    Files(Vec<Vec<u8>>),
}

/// One request/response exchange on the reflection stream of version `$v`.
macro_rules! exchange {
    ($v:ident, $channel:expr, $ask:expr) => {{
        use tonic_reflection::pb::$v::ServerReflectionRequest;
        use tonic_reflection::pb::$v::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$v::server_reflection_response::MessageResponse;
        let message_request = match $ask {
            Ask::ListServices => MessageRequest::ListServices(String::new()),
            Ask::FileContainingSymbol(s) => MessageRequest::FileContainingSymbol(s),
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(message_request),
        };
        let mut stream = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await?
            .into_inner();
        let response = stream
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended without a response"))?;
        match response.message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                Answer::Services(l.service.into_iter().map(|s| s.name).collect())
            }
            Some(MessageResponse::FileDescriptorResponse(f)) => {
                Answer::Files(f.file_descriptor_proto)
            }
            other => anyhow::bail!("unexpected reflection answer {other:?}"),
        }
    }};
}

impl Version {
    async fn ask(self, channel: Channel, ask: Ask) -> anyhow::Result<Answer> {
        Ok(match self {
            Self::V1 => exchange!(v1, channel, ask),
            Self::V1alpha => exchange!(v1alpha, channel, ask),
        })
    }

    async fn list(self, channel: Channel) -> anyhow::Result<BTreeSet<String>> {
        match self.ask(channel, Ask::ListServices).await? {
            Answer::Services(names) => Ok(names.into_iter().collect()),
            other => anyhow::bail!("ListServices answered {other:?}"),
        }
    }

    /// The methods of `service`, from the descriptor the server sends for it.
    async fn methods(self, channel: Channel, service: &str) -> anyhow::Result<Vec<String>> {
        let Answer::Files(files) = self
            .ask(channel, Ask::FileContainingSymbol(service.to_owned()))
            .await?
        else {
            anyhow::bail!("no descriptor for {service}");
        };
        for raw in files {
            let file = prost_types::FileDescriptorProto::decode(raw.as_slice())?;
            let package = file.package();
            if let Some(s) = file
                .service
                .iter()
                .find(|s| format!("{package}.{}", s.name()) == service)
            {
                return Ok(s.method.iter().map(|m| m.name().to_owned()).collect());
            }
        }
        anyhow::bail!("the descriptors sent for {service} do not define it")
    }
}

/// The status of `/service/method` called with an empty message and no credentials, as a
/// client that knows the method only by name calls it (any streaming shape).
async fn call_without_credentials(
    channel: Channel,
    service: &str,
    method: &str,
) -> anyhow::Result<Code> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!("/{service}/{method}"))?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let request = tonic::Request::new(tokio_stream::iter([()]));
    Ok(match grpc.streaming(request, path, codec).await {
        Err(status) => status.code(),
        Ok(response) => match response.into_inner().message().await {
            Err(status) => status.code(),
            Ok(_) => Code::Ok,
        },
    })
}

async fn check(stack: &Stack) -> anyhow::Result<()> {
    let servers: [(&str, _, &[&str]); 3] = [
        (
            "gateway",
            stack.gateway.addr,
            &["dispatch.v1.TaskService", "dispatch.v1.ScheduleService"],
        ),
        (
            "processor",
            stack.processor.addr,
            &["dispatch.v1.AdminService"],
        ),
        (
            "reader",
            stack.reader.addr,
            &["dispatch.v1.TaskQueryService"],
        ),
    ];
    for (server, addr, own) in servers {
        let ch = channel(addr).await?;
        let expected: BTreeSet<String> =
            ALWAYS.iter().chain(own).map(|s| (*s).to_owned()).collect();
        for version in [Version::V1, Version::V1alpha] {
            let listed = version.list(ch.clone()).await?;
            assert_eq!(listed, expected, "{server} over {version:?}");
            for service in &listed {
                let methods = version.methods(ch.clone(), service).await?;
                assert!(!methods.is_empty(), "{server} {version:?}: {service}");
                if !service.starts_with("dispatch.") {
                    continue;
                }
                for method in &methods {
                    let code = call_without_credentials(ch.clone(), service, method).await?;
                    assert_ne!(
                        code,
                        Code::Unimplemented,
                        "{server} lists {service} but does not serve {method}"
                    );
                }
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn every_server_reflects_what_it_serves_over_v1_and_v1alpha() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let checked = check(&stack).await;
    let stopped = stack.stop().await;
    checked?;
    stopped
}
