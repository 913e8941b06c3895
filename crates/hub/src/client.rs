//! The operator CLI's HTTP client: talks to a running hub with the service
//! key, over the same REST API everything else uses.

use serde_json::Value;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the hub at {url}: {source}. Is `panorama-hub serve` running? Point elsewhere with --hub URL or PANORAMA_HUB_URL")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("the hub refused the request ({status}): {message}{}", hint.as_deref().map(|h| format!(" — {h}")).unwrap_or_default())]
    Refused {
        status: u16,
        message: String,
        hint: Option<String>,
    },
    #[error("the hub answered with something that is not JSON: {0}")]
    Decode(String),
}

/// A database refusal in the operator's words (the raw message kept in
/// parentheses for the curious).
pub fn explain_refusal(code: Option<&str>, raw: &str) -> String {
    match code {
        Some("23503") => format!("it refers to something that does not exist, e.g. an unknown team or gateway id ({raw})"),
        Some("23505") => format!("that already exists ({raw})"),
        Some("23514") | Some("23502") => format!("a value is missing or not allowed ({raw})"),
        Some("22P02") => format!("a value is malformed, e.g. an id that is not a UUID ({raw})"),
        _ => raw.to_string(),
    }
}

pub struct HubClient {
    pub url: String,
    apikey: String,
    bearer: String,
    http: reqwest::Client,
}

impl HubClient {
    /// A client acting with the service key.
    pub fn new(url: &str, service_key: &str) -> HubClient {
        Self::with_bearer(url, service_key, service_key)
    }

    /// A client acting as a signed-in person (anon key + their access token).
    pub fn with_bearer(url: &str, apikey: &str, bearer: &str) -> HubClient {
        HubClient {
            url: url.trim_end_matches('/').to_string(),
            apikey: apikey.to_string(),
            bearer: bearer.to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a TLS-less reqwest client builds"),
        }
    }

    /// Whether this client acts as a signed-in person rather than with the
    /// service key (people are not granted upserts that merge).
    pub fn acts_as_person(&self) -> bool {
        self.apikey != self.bearer
    }

    /// The token this client acts with (the realtime socket of `shell
    /// attach` joins with it): the service key, or a signed-in person's
    /// access token.
    pub fn service_key(&self) -> &str {
        &self.bearer
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .header("apikey", &self.apikey)
            .header("authorization", format!("Bearer {}", self.bearer))
            .header(
                "x-client-info",
                concat!("panorama-hub-cli/", env!("CARGO_PKG_VERSION")),
            )
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let res = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.url.clone(),
                source,
            })?;
        let status = res.status().as_u16();
        let text = res
            .text()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.url.clone(),
                source,
            })?;
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|_| ClientError::Decode(text.clone()))?
        };
        if status >= 400 {
            let field = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
            let raw = field("message").or_else(|| field("error")).unwrap_or(text);
            let code = field("code");
            return Err(ClientError::Refused {
                status,
                message: explain_refusal(code.as_deref(), &raw),
                hint: field("hint").or_else(|| field("details")),
            });
        }
        Ok(body)
    }

    /// GET /rest/v1/<table>?<query>
    pub async fn select(
        &self,
        table: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<Value>, ClientError> {
        let req = self
            .request(reqwest::Method::GET, &format!("/rest/v1/{table}"))
            .query(query);
        match self.send(req).await? {
            Value::Array(rows) => Ok(rows),
            other => Err(ClientError::Decode(other.to_string())),
        }
    }

    pub async fn insert(&self, table: &str, row: &Value) -> Result<Value, ClientError> {
        let req = self
            .request(reqwest::Method::POST, &format!("/rest/v1/{table}"))
            .header("prefer", "return=representation")
            .json(row);
        match self.send(req).await? {
            Value::Array(mut rows) if !rows.is_empty() => Ok(rows.remove(0)),
            other => Err(ClientError::Decode(other.to_string())),
        }
    }

    pub async fn update(
        &self,
        table: &str,
        query: &[(&str, String)],
        patch: &Value,
    ) -> Result<Vec<Value>, ClientError> {
        let req = self
            .request(reqwest::Method::PATCH, &format!("/rest/v1/{table}"))
            .header("prefer", "return=representation")
            .query(query)
            .json(patch);
        match self.send(req).await? {
            Value::Array(rows) => Ok(rows),
            other => Err(ClientError::Decode(other.to_string())),
        }
    }

    /// DELETE /rest/v1/<table>?<query>; returns the deleted rows.
    pub async fn delete(
        &self,
        table: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<Value>, ClientError> {
        let req = self
            .request(reqwest::Method::DELETE, &format!("/rest/v1/{table}"))
            .header("prefer", "return=representation")
            .query(query);
        match self.send(req).await? {
            Value::Array(rows) => Ok(rows),
            other => Err(ClientError::Decode(other.to_string())),
        }
    }

    /// POST with `resolution=merge-duplicates` on `on_conflict` (a unique
    /// key): inserts the row or overwrites the columns it names.
    pub async fn upsert(
        &self,
        table: &str,
        row: &Value,
        on_conflict: &str,
    ) -> Result<Value, ClientError> {
        let req = self
            .request(reqwest::Method::POST, &format!("/rest/v1/{table}"))
            .header(
                "prefer",
                "return=representation,resolution=merge-duplicates",
            )
            .query(&[("on_conflict", on_conflict)])
            .json(row);
        match self.send(req).await? {
            Value::Array(mut rows) if !rows.is_empty() => Ok(rows.remove(0)),
            other => Err(ClientError::Decode(other.to_string())),
        }
    }

    /// POST /rest/v1/rpc/<name> with named arguments.
    pub async fn rpc(&self, name: &str, args: &Value) -> Result<Value, ClientError> {
        let req = self
            .request(reqwest::Method::POST, &format!("/rest/v1/rpc/{name}"))
            .json(args);
        self.send(req).await
    }

    /// POST <path> (an `/auth/v1` endpoint) with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    pub async fn health(&self) -> Result<Value, ClientError> {
        self.send(self.request(reqwest::Method::GET, "/health"))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::explain_refusal;

    #[test]
    fn database_codes_are_explained() {
        let fk = explain_refusal(
            Some("23503"),
            "insert or update violates foreign key constraint",
        );
        assert!(
            fk.starts_with("it refers to something that does not exist"),
            "{fk}"
        );
        assert!(
            explain_refusal(Some("22P02"), "invalid input syntax for type uuid")
                .contains("not a UUID")
        );
        assert_eq!(explain_refusal(None, "plain"), "plain");
    }
}
