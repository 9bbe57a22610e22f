//! The API as the k6 checks see it (`dispatch-loadgen proto-schema OUT.json`): every service with
//! its RPCs, every message with its fields and oneofs, every enum, and per `.proto` file its
//! package, imports and services. `scripts/check-k6.sh` gives it to the dry run
//! (`scripts/k6/harness.mjs`) and to the check of the RPC names the scripts call
//! (`scripts/k6/rpcnames.py`).
//!
//! Read from the file descriptor set compiled into `dispatch-proto` (`FILE_DESCRIPTOR_SET`, what
//! gRPC reflection serves): the API the binaries speak, not a re-parse of the `.proto` text.

use std::collections::BTreeMap;

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use serde_json::{Map, Value, json};

/// The schema of every dispatch `.proto` file (the well-known `google/` imports left out: their
/// types are referred to by their full names).
///
/// # Errors
/// The compiled descriptor set does not decode (a build problem).
pub fn schema() -> anyhow::Result<Value> {
    let set = FileDescriptorSet::decode(dispatch_proto::FILE_DESCRIPTOR_SET)?;
    let (mut files, mut services) = (Map::new(), Map::new());
    let (mut messages, mut enums) = (Map::new(), Map::new());
    for f in set.file.iter().filter(|f| !f.name().starts_with("google/")) {
        let package = f.package();
        let mut names = Vec::new();
        for s in &f.service {
            let full = format!("{package}.{}", s.name());
            let rpcs: Map<String, Value> = s
                .method
                .iter()
                .map(|m| {
                    let rpc = json!({
                        "input": full_name(m.input_type()),
                        "output": full_name(m.output_type()),
                        "client_streaming": m.client_streaming(),
                        "server_streaming": m.server_streaming(),
                    });
                    (m.name().to_owned(), rpc)
                })
                .collect();
            services.insert(full.clone(), json!({ "rpcs": rpcs, "file": f.name() }));
            names.push(full);
        }
        names.sort();
        files.insert(
            f.name().to_owned(),
            json!({ "package": package, "imports": f.dependency, "services": names }),
        );
        for m in &f.message_type {
            message(package, m, &mut messages, &mut enums);
        }
        for e in &f.enum_type {
            enums.insert(format!("{package}.{}", e.name()), values(e));
        }
    }
    Ok(json!({ "files": files, "services": services, "messages": messages, "enums": enums }))
}

/// `.dispatch.v1.Task` -> `dispatch.v1.Task`.
fn full_name(t: &str) -> String {
    t.strip_prefix('.').unwrap_or(t).to_owned()
}

fn values(e: &EnumDescriptorProto) -> Value {
    e.value
        .iter()
        .map(|v| json!({ "name": v.name(), "number": v.number() }))
        .collect()
}

/// A field's type: a scalar's proto name, or a message's or enum's full name.
fn type_of(f: &FieldDescriptorProto) -> String {
    let scalar = match f.r#type() {
        Type::Double => "double",
        Type::Float => "float",
        Type::Int64 => "int64",
        Type::Uint64 => "uint64",
        Type::Int32 => "int32",
        Type::Fixed64 => "fixed64",
        Type::Fixed32 => "fixed32",
        Type::Bool => "bool",
        Type::String => "string",
        Type::Bytes => "bytes",
        Type::Uint32 => "uint32",
        Type::Sfixed32 => "sfixed32",
        Type::Sfixed64 => "sfixed64",
        Type::Sint32 => "sint32",
        Type::Sint64 => "sint64",
        Type::Message | Type::Enum | Type::Group => return full_name(f.type_name()),
    };
    scalar.to_owned()
}

/// Adds message `m` (declared in `scope`), its nested messages and its enums. A `map<K, V>`
/// field is `{"type": "map", "key": K, "value": V}`, its generated entry message left out; an
/// `optional` field's synthetic oneof is not a oneof.
fn message(
    scope: &str,
    m: &DescriptorProto,
    messages: &mut Map<String, Value>,
    enums: &mut Map<String, Value>,
) {
    let full = format!("{scope}.{}", m.name());
    let is_entry = |n: &DescriptorProto| n.options.as_ref().is_some_and(|o| o.map_entry());
    let entries: BTreeMap<String, &DescriptorProto> = m
        .nested_type
        .iter()
        .filter(|n| is_entry(n))
        .map(|n| (format!("{full}.{}", n.name()), n))
        .collect();
    let mut fields = Map::new();
    let mut oneofs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &m.field {
        let entry = (f.r#type() == Type::Message)
            .then(|| entries.get(&full_name(f.type_name())))
            .flatten();
        if let Some(entry) = entry {
            let kv = |n: i32| entry.field.iter().find(|e| e.number() == n).map(type_of);
            fields.insert(
                f.name().to_owned(),
                json!({ "type": "map", "key": kv(1), "value": kv(2), "number": f.number() }),
            );
            continue;
        }
        let oneof = f
            .oneof_index
            .filter(|_| !f.proto3_optional())
            .and_then(|i| m.oneof_decl.get(usize::try_from(i).ok()?))
            .map(|o| o.name().to_owned());
        if let Some(o) = &oneof {
            oneofs
                .entry(o.clone())
                .or_default()
                .push(f.name().to_owned());
        }
        fields.insert(
            f.name().to_owned(),
            json!({
                "type": type_of(f),
                "number": f.number(),
                "repeated": f.label() == Label::Repeated,
                "oneof": oneof,
            }),
        );
    }
    for names in oneofs.values_mut() {
        names.sort();
    }
    messages.insert(full.clone(), json!({ "fields": fields, "oneofs": oneofs }));
    for n in m.nested_type.iter().filter(|n| !is_entry(n)) {
        message(&full, n, messages, enums);
    }
    for e in &m.enum_type {
        enums.insert(format!("{full}.{}", e.name()), values(e));
    }
}

#[cfg(test)]
mod tests {
    use super::schema;

    #[test]
    fn the_schema_has_services_messages_maps_oneofs_and_enums() {
        let s = schema().expect("schema");
        let submit = &s["services"]["dispatch.v1.TaskService"]["rpcs"]["SubmitTask"];
        assert_eq!(submit["input"], "dispatch.v1.SubmitTaskRequest");
        assert_eq!(submit["output"], "dispatch.v1.SubmitTaskResponse");
        assert_eq!(submit["server_streaming"], false);
        let watch = &s["services"]["dispatch.v1.TaskQueryService"]["rpcs"]["WatchTask"];
        assert_eq!(watch["server_streaming"], true, "{watch}");
        assert_eq!(
            s["services"]["dispatch.v1.TaskService"]["file"],
            "dispatch/v1/gateway.proto"
        );
        let gateway = &s["files"]["dispatch/v1/gateway.proto"];
        assert_eq!(gateway["package"], "dispatch.v1");
        assert!(
            gateway["imports"]
                .as_array()
                .is_some_and(|i| i.iter().any(|i| i == "dispatch/v1/task.proto")),
            "{gateway}"
        );
        // A map field, without its generated entry message.
        let stats = s["messages"]
            .as_object()
            .expect("messages")
            .iter()
            .find_map(|(_, m)| m["fields"].get("retry_depths").cloned())
            .expect("a message with retry_depths");
        assert_eq!(stats["type"], "map");
        assert_eq!(
            (&stats["key"], &stats["value"]),
            (&"string".into(), &"int64".into())
        );
        assert!(
            !s["messages"]
                .as_object()
                .expect("messages")
                .keys()
                .any(|k| k.ends_with("Entry")),
            "map entries are not messages"
        );
        // A oneof, and a message-typed field by full name.
        let spec = &s["messages"]["dispatch.v1.TaskSpec"]["fields"];
        assert!(spec.as_object().is_some_and(|f| !f.is_empty()), "{spec}");
        let oneof_owner = s["messages"]
            .as_object()
            .expect("messages")
            .values()
            .find(|m| m["oneofs"].as_object().is_some_and(|o| !o.is_empty()))
            .expect("a message with a oneof");
        let (name, members) = oneof_owner["oneofs"]
            .as_object()
            .and_then(|o| o.iter().next())
            .expect("oneof");
        for m in members.as_array().expect("members") {
            let field = &oneof_owner["fields"][m.as_str().expect("name")];
            assert_eq!(field["oneof"], name.as_str(), "{field}");
        }
        let priority = s["enums"]["dispatch.v1.Priority"]
            .as_array()
            .expect("Priority enum");
        assert!(priority.iter().any(|v| v["number"] == 0), "{priority:?}");
        assert!(
            !s["files"]
                .as_object()
                .expect("files")
                .keys()
                .any(|k| k.starts_with("google/")),
            "the well-known types are not dispatch's files"
        );
    }
}
