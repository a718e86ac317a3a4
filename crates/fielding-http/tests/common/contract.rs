//! Checks responses against the contract, `tests/contract/fielding-openapi.yml`
//! and `tests/contract/fielding-batch-openapi.yml` (copies of
//! `shared/contract/`, see `tests/contract/README.md`), and against the
//! extensions fielding serves beyond it, `docs/feed-openapi.yml` (the
//! change feed), all loaded at test time (the schemas are never copied by
//! hand into code).
//!
//! For a response to `METHOD path` with status `S`, the contract's response
//! object is found by matching the path against the templates of every
//! file (each path belongs to at most one). The contract's paths are
//! relative to its server URL (`https://api.cint.com/v1`): a path under
//! that URL's path (`/v1/demand/...`, as the e2e tests' server and
//! `fielding-server` serve it) is matched without it, and a path at the
//! root (`/demand/...`, the router's default base path, as the in-process
//! tests mount it) as it is; its JSON body must validate
//! against the declared schema (OpenAPI 3.0, converted to JSON Schema:
//! `nullable` becomes a `null` alternative), every header the contract
//! marks required must be present, and every declared header that is
//! present must match its schema (`Location` a `uri-reference`,
//! `Retry-After` an integer). Statuses the contract does not list (405,
//! 408, 413, 415) must still carry its `Error` body.

use std::path::PathBuf;
use std::sync::OnceLock;

use axum::http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Map, Value};

/// The contract files, every response checked against the one whose paths
/// match.
pub const FILES: [&str; 2] = ["fielding-openapi.yml", "fielding-batch-openapi.yml"];

/// The extensions' files, under `docs/`, checked the same way.
pub const EXTENSIONS: [&str; 1] = ["feed-openapi.yml"];

/// Both contract files.
pub struct Contract {
    files: Vec<File>,
}

/// One contract file.
struct File {
    name: &'static str,
    doc: Value,
    components: Value,
    /// The path of the file's server URL (`/v1`), empty when it has none.
    base_path: String,
}

/// The in-repository copy of a contract file, e.g. `fielding-openapi.yml`.
pub fn contract_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/contract")
        .join(name)
}

/// An extension's file, e.g. `feed-openapi.yml`: `docs/` of the workspace.
pub fn extension_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs").join(name)
}

pub fn contract() -> &'static Contract {
    static CONTRACT: OnceLock<Contract> = OnceLock::new();
    CONTRACT.get_or_init(|| {
        let contract = FILES.into_iter().map(|name| File::load(name, contract_file(name)));
        let extensions = EXTENSIONS
            .into_iter()
            .map(|name| File::load(name, extension_file(name)));
        Contract {
            files: contract.chain(extensions).collect(),
        }
    })
}

impl File {
    fn load(name: &'static str, path: PathBuf) -> Self {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read the contract at {}: {e}", path.display()));
        let doc: Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{name} is not YAML: {e}"));
        let components = to_json_schema(&doc["components"]);
        let base_path = server_path(&doc);
        File {
            name,
            doc,
            components,
            base_path,
        }
    }
}

/// The path of the first server URL (`https://api.cint.com/v1` → `/v1`),
/// without a trailing `/`; empty when the file names no server.
fn server_path(doc: &Value) -> String {
    let Some(url) = doc.pointer("/servers/0/url").and_then(Value::as_str) else {
        return String::new();
    };
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("", |at| &after_scheme[at..]);
    path.trim_end_matches('/').to_owned()
}

/// OpenAPI 3.0 schema → JSON Schema: `nullable: true` admits `null`.
fn to_json_schema(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                if k == "nullable" || k == "example" || k == "examples" {
                    continue;
                }
                out.insert(k.clone(), to_json_schema(v));
            }
            if map.get("nullable") == Some(&Value::Bool(true)) {
                return json!({ "anyOf": [Value::Object(out), { "type": "null" }] });
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

impl File {
    /// Follows a local `$ref` such as `#/components/responses/Error_NotFound`.
    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let pointer = reference.trim_start_matches('#');
                self.resolve(
                    self.doc
                        .pointer(pointer)
                        .unwrap_or_else(|| panic!("dangling $ref {reference}")),
                )
            }
            None => value,
        }
    }

    /// The contract's path template matching a concrete path, if any,
    /// under the server URL's path or at the root.
    fn template(&self, path: &str) -> Option<&str> {
        let path = match path.strip_prefix(self.base_path.as_str()) {
            Some(relative) if !self.base_path.is_empty() && relative.starts_with('/') => relative,
            _ => path,
        };
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.doc["paths"]
            .as_object()?
            .keys()
            .map(String::as_str)
            .find(|template| {
                let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
                parts.len() == segments.len() && parts.iter().zip(&segments).all(|(t, s)| t.starts_with('{') || t == s)
            })
    }

    fn validate(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        let root = json!({ "components": self.components, "allOf": [to_json_schema(schema)] });
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&root)
            .map_err(|e| format!("the contract's schema does not compile: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Contract {
    /// The file serving `path` and its template, if any.
    fn find(&self, path: &str) -> Option<(&File, &str)> {
        self.files
            .iter()
            .find_map(|file| file.template(path).map(|template| (file, template)))
    }

    /// The contract file named `name`.
    fn file(&self, name: &str) -> &File {
        self.files
            .iter()
            .find(|file| file.name == name)
            .unwrap_or_else(|| panic!("no contract file {name}"))
    }

    /// Panics with the contract's words when the response breaks it.
    #[track_caller]
    pub fn check(&self, method: &Method, path: &str, status: StatusCode, headers: &HeaderMap, body: &Value) {
        // The query string is the operation's parameters, not its path.
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        let error_schema = json!({ "$ref": "#/components/schemas/Error" });
        let Some((file, template)) = self.find(path) else {
            // Either file's `Error` (they are the same schema).
            let file = &self.files[0];
            // A path the contract does not serve must answer in its error format.
            assert!(
                !status.is_success(),
                "{method} {path}: {status} for a path outside the contract"
            );
            file.validate(&error_schema, body)
                .unwrap_or_else(|e| panic!("{method} {path} {status}: body is not the contract's Error: {e}\n{body}"));
            return;
        };
        let name = file.name;
        let operation = &file.doc["paths"][template][method.as_str().to_lowercase()];
        let response = operation["responses"].get(status.as_str()).map(|r| file.resolve(r));
        let Some(response) = response else {
            assert!(
                matches!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED
                        | StatusCode::REQUEST_TIMEOUT
                        | StatusCode::PAYLOAD_TOO_LARGE
                        | StatusCode::UNSUPPORTED_MEDIA_TYPE
                ) || operation.is_null(),
                "{method} {template}: status {status} is not in the contract"
            );
            file.validate(&error_schema, body).unwrap_or_else(|e| {
                panic!("{name}: {method} {path} {status}: body is not the contract's Error: {e}\n{body}")
            });
            return;
        };
        match response.pointer("/content/application~1json/schema") {
            Some(schema) => file.validate(schema, body).unwrap_or_else(|e| {
                panic!("{name}: {method} {template} {status}: body breaks the contract: {e}\n{body}")
            }),
            None => assert!(
                body.is_null(),
                "{name}: {method} {template} {status}: the contract declares no body, got {body}"
            ),
        }
        if let Some(declared) = response["headers"].as_object() {
            for (header_name, header) in declared {
                let header = file.resolve(header);
                let value = headers.get(header_name.as_str());
                if header["required"] == Value::Bool(true) {
                    assert!(
                        value.is_some(),
                        "{name}: {method} {template} {status}: required header {header_name} is missing"
                    );
                }
                let Some(value) = value else { continue };
                let text = value.to_str().unwrap_or_default();
                let schema = file.resolve(&header["schema"]);
                if schema["type"].as_str() == Some("integer") {
                    assert!(
                        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()),
                        "{name}: {method} {template} {status}: header {header_name} must be an integer, got {text:?}"
                    );
                } else {
                    file.validate(schema, &Value::String(text.to_owned())).unwrap_or_else(|e| {
                        panic!("{name}: {method} {template} {status}: header {header_name} {text:?} breaks the contract: {e}")
                    });
                }
            }
        }
        assert!(
            headers.contains_key("traceparent"),
            "{method} {path} {status}: no traceparent"
        );
    }
}

#[test]
fn the_contract_loads_and_its_schemas_compile() {
    let all = contract();
    assert_eq!(
        all.find("/demand/accounts/1/projects/P/target-groups/T/fielding-runs/R")
            .map(|(file, _)| file.name),
        Some("fielding-openapi.yml")
    );
    for action in ["complete", "launch", "pause", "relaunch", "resume"] {
        let jobs = format!("/demand/accounts/1/projects/P/batch-jobs/{action}-fielding-runs-by-target-group-id");
        for path in [jobs.clone(), format!("{jobs}/J")] {
            assert_eq!(
                all.find(&path).map(|(file, _)| file.name),
                Some("fielding-batch-openapi.yml"),
                "{path}"
            );
        }
    }
    assert!(all.find("/nope").is_none());
    for file in &all.files {
        assert_eq!(file.base_path, "/v1", "{}: the server URL's path", file.name);
    }
    assert_eq!(
        all.find("/v1/demand/accounts/1/projects/P/target-groups/T/fielding-runs/R")
            .map(|(file, template)| (file.name, template)),
        all.find("/demand/accounts/1/projects/P/target-groups/T/fielding-runs/R")
            .map(|(file, template)| (file.name, template)),
        "under the server URL's path, the same operation"
    );
    assert!(all.find("/v2/demand/accounts/1/fielding-run-changes").is_none());
    assert!(all.find("/v1demand/accounts/1/fielding-run-changes").is_none());
    for path in [
        "/demand/accounts/1/fielding-run-changes",
        "/demand/accounts/1/projects/P/target-groups/T/fielding-runs/R/changes",
    ] {
        assert_eq!(
            all.find(path).map(|(file, _)| file.name),
            Some("feed-openapi.yml"),
            "{path}"
        );
    }
    let feed = all.file("feed-openapi.yml");
    let change = json!({
        "cursor": "12.0", "account_id": 101, "project_id": "01BTGNYV6HRNK8K8VKZASZCFP0",
        "target_group_id": "01BTGNYV6HRNK8K8VKZASZCFP1", "fielding_run_id": "01BTGNYV6HRNK8K8VKZASZCFP2",
        "version": 1, "action": "schedule", "changed_at": "2023-01-01T23:00:00.000Z",
        "changed_by": "b551326b-ac9d-4d32-8823-4f025787dab9", "status_from": null, "status_to": "scheduled",
        "start_fielding_at_from": null, "start_fielding_at_to": "2023-01-02T09:00:00.000Z",
        "end_fielding_at_from": null, "end_fielding_at_to": "2023-01-31T23:59:59.000Z",
    });
    let page = json!({ "data": [change.clone()], "next_cursor": "12.0", "has_more": false });
    let feed_page = json!({ "$ref": "#/components/schemas/GetFieldingRunChangesResponse" });
    feed.validate(&feed_page, &page).unwrap();
    let mut uncursored = page.clone();
    uncursored["data"][0].as_object_mut().unwrap().remove("cursor");
    assert!(
        feed.validate(&feed_page, &uncursored).is_err(),
        "the feed's items carry a cursor"
    );
    let history_page = json!({ "$ref": "#/components/schemas/GetFieldingRunHistoryResponse" });
    assert!(feed.validate(&history_page, &page).is_err(), "history items carry none");
    let mut history = uncursored.clone();
    history["next_cursor"] = json!("1");
    feed.validate(&history_page, &history).unwrap();
    for (field, bad) in [
        ("status_to", json!(null)),
        ("status_from", json!("gone")),
        ("action", json!("explode")),
        ("version", json!(0)),
        ("cursor", json!("12")),
    ] {
        let mut broken = page.clone();
        broken["data"][0][field] = bad;
        assert!(feed.validate(&feed_page, &broken).is_err(), "{field}");
    }
    let batch = all.file("fielding-batch-openapi.yml");
    let job = json!({
        "job_id": "01BTGNYV6HRNK8K8VKZASZCFP1", "created_at": "2023-01-01T23:00:00.000Z",
        "created_by": "b551326b-ac9d-4d32-8823-4f025787dab9", "status": "Processing",
        "updated_target_groups": { "data": [], "has_more": false },
        "failed_target_groups": { "data": [], "has_more": false },
    });
    let schema = json!({ "$ref": "#/components/schemas/GetBulkPauseTargetGroupJobResponse" });
    batch.validate(&schema, &job).unwrap();
    let mut paginated = job.clone();
    paginated["updated_target_groups"]["has_more"] = json!(true);
    assert!(batch.validate(&schema, &paginated).is_err());
    let mut lowercase = job.clone();
    lowercase["status"] = json!("processing");
    assert!(batch.validate(&schema, &lowercase).is_err());
    let location = json!({ "type": "string", "format": "uri-reference" });
    assert!(batch.validate(&location, &json!("/a/b")).is_ok());
    assert!(batch.validate(&location, &json!("/a b")).is_err());
    let c = all.file("fielding-openapi.yml");
    c.validate(
        &json!({ "$ref": "#/components/schemas/Error" }),
        &json!({ "object": "x", "detail": "y" }),
    )
    .unwrap();
    assert!(c
        .validate(
            &json!({ "$ref": "#/components/schemas/Error" }),
            &json!({ "object": "x" })
        )
        .is_err());
    assert!(c
        .validate(
            &json!({ "$ref": "#/components/schemas/FieldingRunItem" }),
            &json!({ "id": 5 })
        )
        .is_err());
}
