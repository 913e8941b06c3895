//! Edge Functions (`/functions/v1/<name>`) and PostgREST RPC.

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::Method;
use serde_json::Value;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::postgrest::{encode_path_segment, handle_response};
use crate::transport::{header_value, Bearer};

/// Options for [`Functions::invoke_with`].
#[derive(Debug, Clone, Default)]
pub struct InvokeOptions {
    /// Send `Authorization: Bearer <anon key>` instead of the session token
    /// (pairing: `exchange-gateway-pairing-code`).
    pub anon_bearer: bool,
    /// HTTP method; default `POST`.
    pub method: Option<Method>,
    /// Extra headers (a per-call `Authorization` is not supported; use `anon_bearer`).
    pub headers: Vec<(String, String)>,
}

/// Edge-function invoker; get one from [`Client::functions`].
#[derive(Debug, Clone)]
pub struct Functions {
    client: Client,
}

impl Functions {
    pub(crate) fn new(client: Client) -> Self {
        Functions { client }
    }

    /// `POST {url}/functions/v1/<name>` with a JSON body and the session
    /// bearer. 2xx JSON → parsed value; other 2xx text → `Value::String`;
    /// empty → `Null`. Non-2xx → [`Error::Http`] with the status, the body's
    /// `error`/`message` string as message, and the parsed body.
    pub async fn invoke(&self, name: &str, body: Value) -> Result<Value> {
        self.invoke_with(name, body, InvokeOptions::default()).await
    }

    /// [`Functions::invoke`] with options (anon bearer, method, headers).
    pub async fn invoke_with(&self, name: &str, body: Value, opts: InvokeOptions) -> Result<Value> {
        let context = format!("edge function `{name}`");
        let url = self
            .client
            .endpoint(&format!("/functions/v1/{}", encode_path_segment(name)))?;
        let method = opts.method.clone().unwrap_or(Method::POST);
        let mut headers: HeaderMap = self.client.base_headers();
        let payload = if body.is_null() && method == Method::GET {
            None
        } else {
            headers.insert(CONTENT_TYPE, header_value("application/json"));
            Some(serde_json::to_vec(&body).map_err(|e| Error::decode("the function body", e))?)
        };
        for (k, v) in &opts.headers {
            if let Ok(name) = reqwest::header::HeaderName::from_bytes(k.as_bytes()) {
                headers.insert(name, header_value(v));
            }
        }
        let bearer = if opts.anon_bearer {
            Bearer::Anon
        } else {
            Bearer::Session
        };
        let raw = self
            .client
            .send(&context, method, url, headers, payload, bearer)
            .await?;
        let relay = raw
            .headers
            .get("x-relay-error")
            .and_then(|v| v.to_str().ok())
            .map(|v| v == "true")
            .unwrap_or(false);
        let text = String::from_utf8_lossy(&raw.body).to_string();
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        if relay {
            return Err(Error::Http {
                context,
                status: raw.status,
                message: "Relay Error invoking the Edge Function".into(),
                body: parsed,
            });
        }
        if !(200..300).contains(&raw.status) {
            let message = parsed
                .as_ref()
                .and_then(|v| {
                    ["error", "message", "msg"]
                        .iter()
                        .find_map(|k| v.get(*k))
                        .map(|m| match m {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                })
                .unwrap_or_else(|| {
                    if text.trim().is_empty() {
                        "Edge Function returned a non-2xx status code".to_string()
                    } else {
                        text.trim().to_string()
                    }
                });
            return Err(Error::Http {
                context,
                status: raw.status,
                message,
                body: parsed,
            });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        let media = raw
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        if media == "application/json" {
            serde_json::from_str(&text)
                .map_err(|e| Error::decode(format!("the response of {context}"), e))
        } else {
            Ok(Value::String(text))
        }
    }
}

impl Client {
    /// Edge Functions (`{url}/functions/v1/<name>`).
    pub fn functions(&self) -> Functions {
        Functions::new(self.clone())
    }

    /// `POST {url}/rest/v1/rpc/<name>` with named arguments (`Null` → `{}`).
    /// Returns the body: a scalar, object or array; `Null` for void / 204.
    pub async fn rpc(&self, name: &str, args: Value) -> Result<Value> {
        let context = format!("rpc `{name}`");
        let url = self.endpoint(&format!("/rest/v1/rpc/{}", encode_path_segment(name)))?;
        let mut headers = self.base_headers();
        headers.insert("content-profile", header_value(&self.options().schema));
        headers.insert(CONTENT_TYPE, header_value("application/json"));
        let args = if args.is_null() {
            Value::Object(Default::default())
        } else {
            args
        };
        let body = serde_json::to_vec(&args).map_err(|e| Error::decode("the rpc arguments", e))?;
        let raw = self
            .send(
                &context,
                Method::POST,
                url,
                headers,
                Some(body),
                Bearer::Session,
            )
            .await?;
        handle_response(&context, raw)
    }
}
