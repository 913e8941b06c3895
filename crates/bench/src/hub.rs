//! A `panorama-hub` process on a free loopback port, and the few API calls
//! the scenarios need (service key for fixtures, pairing function for
//! gateway identities).

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Hub {
    pub url: String,
    pub anon_key: String,
    pub service_key: String,
    pub http: reqwest::Client,
    /// `None` for a view of hubs started elsewhere (a proxy in front of
    /// replicas, or a simulated-gateway worker's replica).
    child: Option<Child>,
    data: Option<tempfile::TempDir>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Paired {
    pub gateway_id: String,
    pub team_id: String,
    pub access_token: String,
}

impl Hub {
    /// Starts a hub on SQLite in a fresh data directory, or on the
    /// PostgreSQL `database` when given; `keys_of` is another hub whose
    /// keys this one shares (a replica).
    pub fn start(bin: &Path, database: Option<&str>, keys_of: Option<&Hub>) -> Result<Hub> {
        let data = tempfile::tempdir()?;
        if let Some(other) = keys_of.and_then(|h| h.data.as_ref()) {
            std::fs::copy(
                other.path().join("keys.json"),
                data.path().join("keys.json"),
            )
            .context("copying the first replica's keys")?;
        }
        let log = std::fs::File::create(data.path().join("hub-stderr.log"))?;
        let mut cmd = Command::new(bin);
        cmd.args(["--json", "serve", "--listen", "127.0.0.1:0"])
            .env("PANORAMA_HUB_DATA_DIR", data.path())
            .env("PANORAMA_HUB_LOG", "warn")
            .env_remove("PANORAMA_HUB_DATABASE_URL");
        if let Some(url) = database {
            cmd.env("PANORAMA_HUB_DATABASE_URL", url);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line)?;
        let ready: Value = serde_json::from_str(line.trim()).map_err(|_| {
            let log =
                std::fs::read_to_string(data.path().join("hub-stderr.log")).unwrap_or_default();
            anyhow!("hub did not start: {line:?}; its log: {}", log.trim())
        })?;
        let keys: Value =
            serde_json::from_str(&std::fs::read_to_string(data.path().join("keys.json"))?)?;
        let s = |v: &Value, k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("no {k}"))
        };
        let mut hub = Hub::remote(
            &s(&ready, "url")?,
            &s(&keys, "anon_key")?,
            &s(&keys, "service_key")?,
        )?;
        hub.child = Some(child);
        hub.data = Some(data);
        Ok(hub)
    }

    /// A hub (or several behind a proxy) reached at `url` with these keys.
    pub fn remote(url: &str, anon_key: &str, service_key: &str) -> Result<Hub> {
        Ok(Hub {
            url: url.to_string(),
            anon_key: anon_key.to_string(),
            service_key: service_key.to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                .build()?,
            child: None,
            data: None,
        })
    }

    /// The same keys at another URL (a proxy in front of this hub).
    pub fn via(&self, url: &str) -> Result<Hub> {
        Hub::remote(url, &self.anon_key, &self.service_key)
    }

    /// The hub's process id (`None` for a view).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn ws_url(&self, key: &str) -> String {
        format!(
            "{}/realtime/v1/websocket?apikey={key}&vsn=1.0.0",
            self.url.replacen("http", "ws", 1)
        )
    }

    fn req(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .header("apikey", &self.anon_key)
            .header("authorization", format!("Bearer {token}"))
    }

    async fn send_json(rb: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        let res = rb.send().await.with_context(|| what.to_string())?;
        let status = res.status();
        let text = res.text().await?;
        if !status.is_success() {
            bail!("{what}: {status} {text}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    /// Inserts one row or an array of rows with the service key; returns the rows.
    pub async fn insert(&self, table: &str, rows: Value) -> Result<Vec<Value>> {
        let rb = self
            .req(
                reqwest::Method::POST,
                &format!("/rest/v1/{table}"),
                &self.service_key,
            )
            .header("prefer", "return=representation")
            .json(&rows);
        let v = Self::send_json(rb, &format!("insert into {table}")).await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    pub async fn select(&self, table: &str, query: &str) -> Result<Vec<Value>> {
        let rb = self.req(
            reqwest::Method::GET,
            &format!("/rest/v1/{table}?{query}"),
            &self.service_key,
        );
        let v = Self::send_json(rb, &format!("select from {table}")).await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// PATCH with the service key, `return=representation`.
    pub async fn patch(&self, table: &str, query: &str, body: Value) -> Result<Value> {
        let rb = self
            .req(
                reqwest::Method::PATCH,
                &format!("/rest/v1/{table}?{query}"),
                &self.service_key,
            )
            .header("prefer", "return=representation")
            .json(&body);
        Self::send_json(rb, &format!("patch {table}")).await
    }

    pub async fn create_team(&self, name: &str) -> Result<String> {
        let rows = self.insert("teams", json!({ "name": name })).await?;
        id_of(rows.first())
    }

    /// A fresh pairing code for `team_id` (valid far into the future).
    pub async fn pairing_code(&self, team_id: &str) -> Result<String> {
        let code = format!("B{}", &uuid::Uuid::new_v4().simple().to_string()[..10]).to_uppercase();
        self.insert(
            "gateway_pairing_codes",
            json!({"code": code, "team_id": team_id, "expires_at": "2999-01-01T00:00:00Z"}),
        )
        .await?;
        Ok(code)
    }

    /// Exchanges `code` through the pairing function (as a gateway does).
    pub async fn exchange(&self, code: &str, device: &str) -> Result<Paired> {
        let rb = self
            .req(
                reqwest::Method::POST,
                "/functions/v1/exchange-gateway-pairing-code",
                &self.anon_key,
            )
            .json(&json!({"code": code, "device_name": device}));
        let body = Self::send_json(rb, "pairing").await?;
        let s = |k: &str| {
            body[k]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("pairing reply lacks {k}: {body}"))
        };
        Ok(Paired {
            gateway_id: s("gateway_id")?,
            team_id: s("team_id")?,
            access_token: s("access_token")?,
        })
    }

    /// `gateway-heartbeat` with a gateway token.
    pub async fn heartbeat(&self, token: &str, body: &Value) -> Result<()> {
        let rb = self
            .req(
                reqwest::Method::POST,
                "/functions/v1/gateway-heartbeat",
                token,
            )
            .json(body);
        Self::send_json(rb, "heartbeat").await.map(|_| ())
    }

    pub async fn gateway_row(&self, gateway_id: &str) -> Result<Option<Value>> {
        Ok(self
            .select("team_gateways", &format!("id=eq.{gateway_id}&select=*"))
            .await?
            .into_iter()
            .next())
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn id_of(row: Option<&Value>) -> Result<String> {
    row.and_then(|r| r["id"].as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("row without id: {row:?}"))
}
