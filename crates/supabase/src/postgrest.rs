//! PostgREST query builder (`/rest/v1`), wire-compatible with postgrest-js 2.x.

use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use reqwest::Method;
use serde_json::Value;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::transport::{header_value, Bearer, RawResponse};

/// A value usable in a filter (`eq.<v>` etc.), stringified like JS `String(v)`.
pub trait FilterValue {
    fn to_filter_string(&self) -> String;
}

macro_rules! display_filter_value {
    ($($t:ty),*) => {$(
        impl FilterValue for $t {
            fn to_filter_string(&self) -> String { self.to_string() }
        }
    )*};
}
display_filter_value!(
    str, String, i8, i16, i32, i64, u8, u16, u32, u64, usize, isize, f32, f64, bool
);

impl FilterValue for Value {
    fn to_filter_string(&self) -> String {
        match self {
            Value::String(s) => s.clone(),
            Value::Null => "null".into(),
            other => other.to_string(),
        }
    }
}

impl<T: FilterValue + ?Sized> FilterValue for &T {
    fn to_filter_string(&self) -> String {
        (**self).to_filter_string()
    }
}

/// Remove whitespace outside double quotes (postgrest-js `select` cleaning).
pub fn clean_columns(cols: &str) -> String {
    let mut quoted = false;
    let mut out = String::with_capacity(cols.len());
    for c in cols.chars() {
        if c.is_whitespace() && !quoted {
            continue;
        }
        if c == '"' {
            quoted = !quoted;
        }
        out.push(c);
    }
    out
}

/// Build the `in.(…)` list: dedupe (first-seen order), quote items that
/// contain `,`, `(` or `)`.
pub fn in_list<V: FilterValue>(values: &[V]) -> String {
    let mut seen: Vec<String> = Vec::new();
    for v in values {
        let s = v.to_filter_string();
        if !seen.contains(&s) {
            seen.push(s);
        }
    }
    let items: Vec<String> = seen
        .into_iter()
        .map(|s| {
            if s.contains([',', '(', ')']) {
                format!("\"{s}\"")
            } else {
                s
            }
        })
        .collect();
    format!("({})", items.join(","))
}

/// Encode query pairs exactly like `URLSearchParams.toString()`.
pub fn encode_query(params: &[(String, String)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    ser.finish()
}

/// The synthetic error supabase-js builds when `maybeSingle()` sees >1 row.
pub fn maybe_single_error(rows: usize) -> Error {
    Error::Postgrest {
        status: 406,
        code: "PGRST116".into(),
        message: "JSON object requested, multiple (or no) rows returned".into(),
        details: Some(format!(
            "Results contain {rows} rows, application/vnd.pgrst.object+json requires 1 row"
        )),
        hint: None,
    }
}

/// Collapse an array result like `maybeSingle()`: 0 → None, 1 → row, more → PGRST116.
pub fn collapse_maybe_single(mut rows: Vec<Value>) -> Result<Option<Value>> {
    match rows.len() {
        0 => Ok(None),
        1 => Ok(rows.pop()),
        n => Err(maybe_single_error(n)),
    }
}

/// A PostgREST request being built. Created by [`Client::from`]; defaults to
/// a `GET` (select). `insert`/`update`/`delete`/`upsert` switch the method.
#[derive(Debug, Clone)]
#[must_use = "a query does nothing until a terminal method (execute, maybe_single, single) is awaited"]
pub struct QueryBuilder {
    client: Client,
    table: String,
    method: Method,
    params: Vec<(String, String)>,
    prefer: Vec<String>,
    body: Option<Value>,
    object_accept: bool,
    schema: Option<String>,
}

impl Client {
    /// Start a PostgREST query on `table` (`{url}/rest/v1/<table>`).
    pub fn from(&self, table: &str) -> QueryBuilder {
        QueryBuilder::new(self.clone(), table)
    }
}

impl QueryBuilder {
    pub(crate) fn new(client: Client, table: &str) -> Self {
        QueryBuilder {
            client,
            table: table.to_string(),
            method: Method::GET,
            params: Vec::new(),
            prefer: Vec::new(),
            body: None,
            object_accept: false,
            schema: None,
        }
    }

    /// `searchParams.set`: replace the first occurrence in place, drop the
    /// others, or append.
    fn set_param(&mut self, key: &str, value: String) {
        if let Some(pos) = self.params.iter().position(|(k, _)| k == key) {
            self.params[pos].1 = value;
            let mut i = 0;
            self.params.retain(|(k, _)| {
                i += 1;
                k != key || i - 1 == pos
            });
        } else {
            self.params.push((key.to_string(), value));
        }
    }

    fn append(mut self, key: &str, value: String) -> Self {
        self.params.push((key.to_string(), value));
        self
    }

    fn add_prefer(&mut self, p: &str) {
        if !self.prefer.iter().any(|x| x == p) {
            self.prefer.push(p.to_string());
        }
    }

    /// Override the schema (`Accept-Profile`/`Content-Profile`); default from options.
    pub fn schema(mut self, schema: &str) -> Self {
        self.schema = Some(schema.to_string());
        self
    }

    /// `select=<cols>` (whitespace outside quotes removed). After
    /// `insert`/`update`/`delete`/`upsert` it also adds
    /// `Prefer: return=representation`.
    pub fn select(mut self, columns: &str) -> Self {
        self.set_param("select", clean_columns(columns));
        if self.method != Method::GET && self.method != Method::HEAD {
            self.add_prefer("return=representation");
        }
        self
    }

    /// Insert one row (JSON object) or many (JSON array; adds `columns=`).
    pub fn insert(mut self, values: Value) -> Self {
        self.method = Method::POST;
        if let Value::Array(rows) = &values {
            let mut cols: Vec<String> = Vec::new();
            for row in rows {
                if let Value::Object(m) = row {
                    for k in m.keys() {
                        if !cols.contains(k) {
                            cols.push(k.clone());
                        }
                    }
                }
            }
            if !cols.is_empty() {
                let quoted: Vec<String> = cols.iter().map(|c| format!("\"{c}\"")).collect();
                self.set_param("columns", quoted.join(","));
            }
        }
        self.body = Some(values);
        self
    }

    /// Upsert (`POST` with `Prefer: resolution=merge-duplicates` or
    /// `ignore-duplicates`, optional `on_conflict`).
    pub fn upsert(
        mut self,
        values: Value,
        on_conflict: Option<&str>,
        ignore_duplicates: bool,
    ) -> Self {
        self.prefer.insert(
            0,
            if ignore_duplicates {
                "resolution=ignore-duplicates".into()
            } else {
                "resolution=merge-duplicates".into()
            },
        );
        if let Some(c) = on_conflict {
            self.set_param("on_conflict", c.to_string());
        }
        self.insert(values)
    }

    /// `PATCH` with the JSON object `values`; add filters, and `.select()` to
    /// get the updated rows back.
    pub fn update(mut self, values: Value) -> Self {
        self.method = Method::PATCH;
        self.body = Some(values);
        self
    }

    /// `DELETE` the filtered rows.
    pub fn delete(mut self) -> Self {
        self.method = Method::DELETE;
        self.body = None;
        self
    }

    /// `col=eq.<v>`
    pub fn eq(self, column: &str, value: impl FilterValue) -> Self {
        let v = format!("eq.{}", value.to_filter_string());
        self.append(column, v)
    }
    /// `col=neq.<v>`
    pub fn neq(self, column: &str, value: impl FilterValue) -> Self {
        let v = format!("neq.{}", value.to_filter_string());
        self.append(column, v)
    }
    /// `col=gt.<v>`
    pub fn gt(self, column: &str, value: impl FilterValue) -> Self {
        let v = format!("gt.{}", value.to_filter_string());
        self.append(column, v)
    }
    /// `col=gte.<v>`
    pub fn gte(self, column: &str, value: impl FilterValue) -> Self {
        let v = format!("gte.{}", value.to_filter_string());
        self.append(column, v)
    }
    /// `col=lt.<v>`
    pub fn lt(self, column: &str, value: impl FilterValue) -> Self {
        let v = format!("lt.{}", value.to_filter_string());
        self.append(column, v)
    }
    /// `col=lte.<v>`
    pub fn lte(self, column: &str, value: impl FilterValue) -> Self {
        let v = format!("lte.{}", value.to_filter_string());
        self.append(column, v)
    }
    /// `col=like.<pattern>`
    pub fn like(self, column: &str, pattern: &str) -> Self {
        self.append(column, format!("like.{pattern}"))
    }
    /// `col=ilike.<pattern>`
    pub fn ilike(self, column: &str, pattern: &str) -> Self {
        self.append(column, format!("ilike.{pattern}"))
    }
    /// `col=is.<value>` where value is `null`, `true`, `false` (or `unknown`).
    pub fn is(self, column: &str, value: &str) -> Self {
        self.append(column, format!("is.{value}"))
    }
    /// `col=is.null`
    pub fn is_null(self, column: &str) -> Self {
        self.is(column, "null")
    }
    /// `col=in.(v1,v2,…)` (deduplicated; items with `,()` are quoted).
    pub fn in_<V: FilterValue>(self, column: &str, values: &[V]) -> Self {
        let v = format!("in.{}", in_list(values));
        self.append(column, v)
    }
    /// `col=not.<op>.<value>`
    pub fn not(self, column: &str, op: &str, value: impl FilterValue) -> Self {
        let v = format!("not.{op}.{}", value.to_filter_string());
        self.append(column, v)
    }
    /// `col=<op>.<value>` (raw escape hatch).
    pub fn filter(self, column: &str, op: &str, value: impl FilterValue) -> Self {
        let v = format!("{op}.{}", value.to_filter_string());
        self.append(column, v)
    }
    /// `or=(<filters>)`. Accepts `"a.eq.1,b.is.null"` or an already
    /// parenthesised `"(a.eq.1,b.is.null)"`; the content is inserted verbatim.
    pub fn or(self, filters: &str) -> Self {
        let inner = filters
            .strip_prefix('(')
            .and_then(|f| f.strip_suffix(')'))
            .unwrap_or(filters);
        self.append("or", format!("({inner})"))
    }

    /// `order=<col>.asc|desc[.nullsfirst|.nullslast]`; repeated calls append
    /// with commas. The nulls modifier is sent only when given.
    pub fn order(mut self, column: &str, ascending: bool, nulls_first: Option<bool>) -> Self {
        let mut term = format!("{column}.{}", if ascending { "asc" } else { "desc" });
        match nulls_first {
            Some(true) => term.push_str(".nullsfirst"),
            Some(false) => term.push_str(".nullslast"),
            None => {}
        }
        let existing = self
            .params
            .iter()
            .find(|(k, _)| k == "order")
            .map(|(_, v)| v.clone());
        let value = match existing {
            Some(prev) => format!("{prev},{term}"),
            None => term,
        };
        self.set_param("order", value);
        self
    }
    /// `limit=n`
    pub fn limit(mut self, n: u64) -> Self {
        self.set_param("limit", n.to_string());
        self
    }
    /// `offset=n`
    pub fn offset(mut self, n: u64) -> Self {
        self.set_param("offset", n.to_string());
        self
    }
    /// `.range(from, to)` → `offset=from&limit=to-from+1`.
    pub fn range(mut self, from: u64, to: u64) -> Self {
        self.set_param("offset", from.to_string());
        self.set_param("limit", (to.saturating_sub(from) + 1).to_string());
        self
    }

    /// The encoded query string (URLSearchParams-compatible).
    pub fn query_string(&self) -> String {
        encode_query(&self.params)
    }

    /// The full request URL.
    pub fn url(&self) -> String {
        let table = encode_path_segment(&self.table);
        let qs = self.query_string();
        if qs.is_empty() {
            format!("{}/rest/v1/{}", self.client.url(), table)
        } else {
            format!("{}/rest/v1/{}?{}", self.client.url(), table, qs)
        }
    }

    fn context(&self) -> String {
        format!("{} /rest/v1/{}", self.method, self.table)
    }

    async fn send(&self) -> Result<RawResponse> {
        let url = url::Url::parse(&self.url())
            .map_err(|e| Error::InvalidRequest(format!("bad PostgREST URL: {e}")))?;
        let mut headers: HeaderMap = self.client.base_headers();
        let schema = self
            .schema
            .clone()
            .unwrap_or_else(|| self.client.options().schema.clone());
        let is_read = self.method == Method::GET || self.method == Method::HEAD;
        if is_read {
            headers.insert("accept-profile", header_value(&schema));
        } else {
            headers.insert("content-profile", header_value(&schema));
            headers.insert(CONTENT_TYPE, header_value("application/json"));
        }
        if self.object_accept {
            headers.insert(ACCEPT, header_value("application/vnd.pgrst.object+json"));
        }
        if !self.prefer.is_empty() {
            headers.insert("prefer", header_value(&self.prefer.join(", ")));
        }
        let body = match (&self.method, &self.body) {
            (m, Some(b)) if *m == Method::POST || *m == Method::PATCH => {
                Some(serde_json::to_vec(b).map_err(|e| Error::decode("the request body", e))?)
            }
            (m, None) if *m == Method::PATCH => {
                return Err(Error::InvalidRequest("update() requires a body".into()))
            }
            _ => None,
        };
        self.client
            .send(
                &self.context(),
                self.method.clone(),
                url,
                headers,
                body,
                Bearer::Session,
            )
            .await
    }

    /// Run the request and return the raw JSON body (`Null` when empty).
    pub async fn execute_value(self) -> Result<Value> {
        let raw = self.send().await?;
        handle_response(&self.context(), raw)
    }

    /// Run the request and return the rows: a JSON array as a `Vec`, an
    /// empty body (write without `.select`) as `[]`, an object as one row.
    pub async fn execute(self) -> Result<Vec<Value>> {
        let ctx = self.context();
        match self.execute_value().await? {
            Value::Array(rows) => Ok(rows),
            Value::Null => Ok(Vec::new()),
            obj @ Value::Object(_) => Ok(vec![obj]),
            other => Err(Error::decode(
                format!("the response of {ctx}"),
                format!("expected rows, got {other}"),
            )),
        }
    }

    /// supabase-js `maybeSingle()`: an ordinary array request collapsed on
    /// the client. 0 rows → `None`, 1 → `Some(row)`, more → `PGRST116`
    /// (status 406, built exactly like supabase-js).
    pub async fn maybe_single(self) -> Result<Option<Value>> {
        collapse_maybe_single(self.execute().await?)
    }

    /// supabase-js `single()`: `Accept: application/vnd.pgrst.object+json`;
    /// the server answers 406 `PGRST116` unless exactly one row matched.
    pub async fn single(mut self) -> Result<Value> {
        self.object_accept = true;
        let ctx = self.context();
        match self.execute_value().await? {
            Value::Null => Err(Error::decode(
                format!("the response of {ctx}"),
                "empty body for single()",
            )),
            v => Ok(v),
        }
    }
}

/// Percent-encode a path segment (keeps unreserved characters).
pub(crate) fn encode_path_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Turn a PostgREST answer into JSON or an error (postgrest-js semantics).
pub(crate) fn handle_response(context: &str, raw: RawResponse) -> Result<Value> {
    let text = String::from_utf8_lossy(&raw.body);
    let text = text.trim();
    if (200..300).contains(&raw.status) {
        if text.is_empty() {
            return Ok(Value::Null);
        }
        return serde_json::from_str(text)
            .map_err(|e| Error::decode(format!("the response of {context}"), e));
    }
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    if raw.status == 404 {
        match &parsed {
            Some(Value::Array(_)) => return Ok(Value::Array(Vec::new())),
            None if text.is_empty() => return Ok(Value::Null),
            _ => {}
        }
    }
    Err(postgrest_error(context, raw.status, parsed, text))
}

pub(crate) fn postgrest_error(
    context: &str,
    status: u16,
    body: Option<Value>,
    text: &str,
) -> Error {
    let as_str = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    match body {
        Some(Value::Object(m)) if m.contains_key("message") || m.contains_key("code") => {
            Error::Postgrest {
                status,
                code: as_str(m.get("code")).unwrap_or_default(),
                message: as_str(m.get("message")).unwrap_or_default(),
                details: as_str(m.get("details")),
                hint: as_str(m.get("hint")),
            }
        }
        other => Error::Http {
            context: context.to_string(),
            status,
            message: if text.is_empty() {
                format!("HTTP {status} with an empty body")
            } else {
                text.to_string()
            },
            body: other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn client() -> Client {
        Client::new("http://127.0.0.1:54321/", "anon").unwrap()
    }

    #[test]
    fn url_search_params_encoding_matches_supabase_js() {
        let q = client()
            .from("todos")
            .select("id, title, \"my col\"")
            .eq("status", "open task")
            .in_("id", &["1", "2", "a,b"])
            .or("status.eq.open,priority.gt.3")
            .order("created_at", false, Some(true))
            .order("id", true, None)
            .limit(10);
        assert_eq!(
            q.query_string(),
            "select=id%2Ctitle%2C%22my+col%22&status=eq.open+task&id=in.%281%2C2%2C%22a%2Cb%22%29&or=%28status.eq.open%2Cpriority.gt.3%29&order=created_at.desc.nullsfirst%2Cid.asc&limit=10"
        );
        assert!(q
            .url()
            .starts_with("http://127.0.0.1:54321/rest/v1/todos?select="));
    }

    #[test]
    fn filters() {
        let q = client()
            .from("gateway_jobs")
            .select("*")
            .eq("team_id", 7)
            .neq("status", "done")
            .is_null("gateway_id")
            .is("active", "true")
            .not("x", "is", Value::Null)
            .or("(gateway_id.is.null,gateway_id.eq.g1)")
            .in_("n", &[json!(1), json!(1), json!("x"), Value::Null])
            .offset(5);
        let pairs: Vec<(String, String)> = form_urlencoded::parse(q.query_string().as_bytes())
            .into_owned()
            .collect();
        let expect = [
            ("select", "*"),
            ("team_id", "eq.7"),
            ("status", "neq.done"),
            ("gateway_id", "is.null"),
            ("active", "is.true"),
            ("x", "not.is.null"),
            ("or", "(gateway_id.is.null,gateway_id.eq.g1)"),
            ("n", "in.(1,x,null)"),
            ("offset", "5"),
        ];
        let expect: Vec<(String, String)> = expect
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(pairs, expect);
    }

    #[test]
    fn bulk_insert_adds_columns_and_select_sets_prefer() {
        let q = client()
            .from("t")
            .insert(json!([{"title":"a","done":false},{"title":"b","extra":1}]))
            .select("id");
        assert_eq!(
            q.query_string(),
            "columns=%22title%22%2C%22done%22%2C%22extra%22&select=id"
        );
        assert_eq!(q.prefer, vec!["return=representation".to_string()]);
        let single = client().from("t").insert(json!({"a":1}));
        assert_eq!(single.query_string(), "");
        assert!(single.prefer.is_empty());
        let up = client()
            .from("t")
            .update(json!({"status":"claimed"}))
            .eq("id", "7")
            .eq("status", "queued")
            .select("id");
        assert_eq!(up.query_string(), "id=eq.7&status=eq.queued&select=id");
        assert_eq!(up.method, Method::PATCH);
        let sel = client().from("t").select("a").select("b").range(10, 19);
        assert_eq!(sel.query_string(), "select=b&offset=10&limit=10");
        assert!(sel.prefer.is_empty());
    }

    #[test]
    fn maybe_single_collapse() {
        assert_eq!(collapse_maybe_single(vec![]).unwrap(), None);
        assert_eq!(
            collapse_maybe_single(vec![json!({"id":1})]).unwrap(),
            Some(json!({"id":1}))
        );
        let err = collapse_maybe_single(vec![json!({}), json!({})]).unwrap_err();
        match err {
            Error::Postgrest {
                status,
                code,
                message,
                details,
                hint,
            } => {
                assert_eq!(status, 406);
                assert_eq!(code, "PGRST116");
                assert_eq!(
                    message,
                    "JSON object requested, multiple (or no) rows returned"
                );
                assert_eq!(
                    details.as_deref(),
                    Some(
                        "Results contain 2 rows, application/vnd.pgrst.object+json requires 1 row"
                    )
                );
                assert_eq!(hint, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn clean_columns_keeps_quoted_spaces() {
        assert_eq!(
            clean_columns(" id ,\n title, \"my col\" "),
            "id,title,\"my col\""
        );
    }

    #[test]
    fn error_mapping() {
        let raw = RawResponse {
            status: 409,
            headers: HeaderMap::new(),
            body: br#"{"code":"23505","details":"Key (id)=(1) already exists.","hint":null,"message":"duplicate key"}"#.to_vec(),
        };
        let e = handle_response("POST /rest/v1/t", raw).unwrap_err();
        assert!(e.is_unique_violation());
        assert_eq!(e.message(), "duplicate key");
        let raw = RawResponse {
            status: 502,
            headers: HeaderMap::new(),
            body: b"bad gateway".to_vec(),
        };
        let e = handle_response("GET /rest/v1/t", raw).unwrap_err();
        assert!(matches!(e, Error::Http { status: 502, .. }), "{e:?}");
        let raw = RawResponse {
            status: 404,
            headers: HeaderMap::new(),
            body: b"[]".to_vec(),
        };
        assert_eq!(handle_response("x", raw).unwrap(), json!([]));
        let raw = RawResponse {
            status: 204,
            headers: HeaderMap::new(),
            body: vec![],
        };
        assert_eq!(handle_response("x", raw).unwrap(), Value::Null);
    }
}
