//! Checks responses against the contract, `tests/contract/fielding-openapi.yml`
//! (a copy of `shared/contract/`, see `tests/contract/README.md`), loaded at
//! test time (the schemas are never copied by hand into code).
//!
//! For a response to `METHOD path` with status `S`, the contract's response
//! object is found by matching the path against the contract's templates;
//! its JSON body must validate against the declared schema (OpenAPI 3.0,
//! converted to JSON Schema: `nullable` becomes a `null` alternative), and
//! every header the contract marks required must be present. Statuses the
//! contract does not list (405, 408, 413, 415) must still carry its `Error`
//! body.

use std::path::PathBuf;
use std::sync::OnceLock;

use axum::http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Map, Value};

pub struct Contract {
    doc: Value,
    components: Value,
}

/// The in-repository copy of a contract file, e.g. `fielding-openapi.yml`.
pub fn contract_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/contract")
        .join(name)
}

pub fn contract() -> &'static Contract {
    static CONTRACT: OnceLock<Contract> = OnceLock::new();
    CONTRACT.get_or_init(|| {
        let path = contract_file("fielding-openapi.yml");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read the contract at {}: {e}", path.display()));
        let doc: Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("the contract is not YAML: {e}"));
        let components = to_json_schema(&doc["components"]);
        Contract { doc, components }
    })
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

impl Contract {
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

    /// The contract's path template matching a concrete path, if any.
    fn template(&self, path: &str) -> Option<&str> {
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

    /// Panics with the contract's words when the response breaks it.
    #[track_caller]
    pub fn check(&self, method: &Method, path: &str, status: StatusCode, headers: &HeaderMap, body: &Value) {
        let error_schema = json!({ "$ref": "#/components/schemas/Error" });
        let Some(template) = self.template(path) else {
            // A path the contract does not serve must answer in its error format.
            assert!(
                !status.is_success(),
                "{method} {path}: {status} for a path outside the contract"
            );
            self.validate(&error_schema, body)
                .unwrap_or_else(|e| panic!("{method} {path} {status}: body is not the contract's Error: {e}\n{body}"));
            return;
        };
        let operation = &self.doc["paths"][template][method.as_str().to_lowercase()];
        let response = operation["responses"].get(status.as_str()).map(|r| self.resolve(r));
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
            self.validate(&error_schema, body)
                .unwrap_or_else(|e| panic!("{method} {path} {status}: body is not the contract's Error: {e}\n{body}"));
            return;
        };
        match response.pointer("/content/application~1json/schema") {
            Some(schema) => self
                .validate(schema, body)
                .unwrap_or_else(|e| panic!("{method} {template} {status}: body breaks the contract: {e}\n{body}")),
            None => assert!(
                body.is_null(),
                "{method} {template} {status}: the contract declares no body, got {body}"
            ),
        }
        if let Some(declared) = response["headers"].as_object() {
            for (name, header) in declared {
                let header = self.resolve(header);
                let value = headers.get(name.as_str());
                if header["required"] == Value::Bool(true) {
                    assert!(
                        value.is_some(),
                        "{method} {template} {status}: required header {name} is missing"
                    );
                }
                if let (Some(value), Some("integer")) = (value, header["schema"]["type"].as_str()) {
                    let text = value.to_str().unwrap_or_default();
                    assert!(
                        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()),
                        "{method} {template} {status}: header {name} must be an integer, got {text:?}"
                    );
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
    let c = contract();
    assert!(c
        .template("/demand/accounts/1/projects/P/target-groups/T/fielding-runs/R")
        .is_some());
    assert!(c.template("/nope").is_none());
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
