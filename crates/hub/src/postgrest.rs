//! The PostgREST query grammar the gateway and supabase-js use
//! (supabase-wire §2.2–2.4): select lists, filters, logic trees, ordering and
//! paging, parsed from a form-urlencoded query string into a plain AST.
//! Pure: no storage, no HTTP. Column names are checked later, against the
//! schema, by the store's SQL compiler.

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    Like,
    Ilike,
    Is,
    In,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "like" => Op::Like,
            "ilike" => Op::Ilike,
            "is" => Op::Is,
            "in" => Op::In,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsValue {
    Null,
    True,
    False,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// A single value, still text: it is cast to the column's type later.
    Value(String),
    /// An `in.(…)` list; `None` is the bare word `null`.
    List(Vec<Option<String>>),
    Is(IsValue),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Cond {
        column: String,
        op: Op,
        operand: Operand,
    },
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    /// Policy-only (never parsed from a request): the row's `subagent_id`
    /// names a subagent assigned to this gateway.
    SubagentOfGateway(String),
    /// Policy-only: the row's `column` names a team in which `user_id`
    /// holds one of `roles`, through the live session `session_id`
    /// (membership and session are read in the same statement, so a
    /// removed member or an ended session loses access at once, realtime
    /// deliveries included).
    TeamOfMember {
        column: &'static str,
        user_id: String,
        session_id: String,
        roles: &'static [&'static str],
    },
    /// Policy-only: matches nothing.
    False,
}

impl Filter {
    pub fn eq(column: &str, value: &str) -> Filter {
        Filter::Cond {
            column: column.into(),
            op: Op::Eq,
            operand: Operand::Value(value.into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub column: String,
    pub descending: bool,
    /// `None`: PostgreSQL's default (NULLs last ascending, first descending).
    pub nulls_first: Option<bool>,
}

impl Order {
    pub fn effective_nulls_first(&self) -> bool {
        self.nulls_first.unwrap_or(self.descending)
    }
}

/// A parsed request: everything the query string says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// `None` means `*`.
    pub select: Option<Vec<String>>,
    pub filters: Vec<Filter>,
    pub order: Vec<Order>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
    pub on_conflict: Option<Vec<String>>,
    pub columns: Option<Vec<String>>,
    /// Arguments of an RPC called with GET (non-reserved, non-filter keys are
    /// not possible for tables; for RPC every unknown key is an argument).
    pub other: Vec<(String, String)>,
}

/// Parses a raw (still percent-encoded) query string. `+` means space.
pub fn parse_query(raw: &str) -> Result<Query, ApiError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    parse_pairs(&pairs)
}

pub fn parse_pairs(pairs: &[(String, String)]) -> Result<Query, ApiError> {
    let mut q = Query::default();
    for (key, value) in pairs {
        match key.as_str() {
            "select" => q.select = parse_select(value)?,
            "order" => q.order = parse_order(value)?,
            "limit" => q.limit = Some(parse_uint("limit", value)?),
            "offset" => q.offset = Some(parse_uint("offset", value)?),
            "on_conflict" => q.on_conflict = Some(split_names(value)),
            "columns" => q.columns = Some(split_names(value)),
            "or" | "and" | "not.or" | "not.and" => {
                let (negated, kind) = match key.strip_prefix("not.") {
                    Some(k) => (true, k),
                    None => (false, key.as_str()),
                };
                let mut p = LogicParser::new(value);
                let items = p.logic()?;
                p.expect_end()?;
                let f = if kind == "or" {
                    Filter::Or(items)
                } else {
                    Filter::And(items)
                };
                q.filters
                    .push(if negated { Filter::Not(Box::new(f)) } else { f });
            }
            column => {
                if column.is_empty() {
                    return Err(ApiError::parse(
                        "\"failed to parse filter\" (line 1, column 1)",
                        "a filter needs a column name before '='",
                    ));
                }
                q.filters.push(parse_condition(column, value)?);
            }
        }
    }
    Ok(q)
}

fn parse_uint(name: &str, value: &str) -> Result<u64, ApiError> {
    value.trim().parse::<u64>().map_err(|_| {
        ApiError::parse(
            format!("\"failed to parse {name} ({value})\" (line 1, column 1)"),
            format!("{name} must be a non-negative integer"),
        )
    })
}

/// Splits `a,"b c",d` into names, dropping the quotes.
fn split_names(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in value.chars() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `*` or a list of plain column names. Embeds, casts, aliases and JSON
/// paths are refused with PGRST100: the gateway never uses them.
fn parse_select(value: &str) -> Result<Option<Vec<String>>, ApiError> {
    let names = split_names(value);
    if names.is_empty() || names.iter().any(|n| n == "*") {
        return Ok(None);
    }
    for n in &names {
        if n.contains(['(', ')', ':', '-', '>', '!']) {
            return Err(ApiError::parse(
                format!("\"failed to parse select parameter ({value})\" (line 1, column 1)"),
                format!("unsupported select item {n:?}: the hub serves plain column lists only (no embedded resources, casts, aliases or JSON paths)"),
            ));
        }
    }
    Ok(Some(names))
}

fn parse_order(value: &str) -> Result<Vec<Order>, ApiError> {
    let mut out = Vec::new();
    for item in split_names(value) {
        let mut parts = item.split('.');
        let column = parts.next().unwrap_or_default().to_string();
        let mut o = Order {
            column,
            descending: false,
            nulls_first: None,
        };
        for modifier in parts {
            match modifier {
                "asc" => o.descending = false,
                "desc" => o.descending = true,
                "nullsfirst" => o.nulls_first = Some(true),
                "nullslast" => o.nulls_first = Some(false),
                other => {
                    return Err(ApiError::parse(
                        format!("\"failed to parse order ({value})\" (line 1, column 1)"),
                        format!("unexpected order modifier {other:?}: use asc, desc, nullsfirst or nullslast"),
                    ))
                }
            }
        }
        out.push(o);
    }
    Ok(out)
}

fn filter_error(expr: &str, why: &str) -> ApiError {
    ApiError::parse(
        format!("\"failed to parse filter ({expr})\" (line 1, column 1)"),
        why.to_string(),
    )
}

/// `[not.]op.value` for a column given as a query key.
fn parse_condition(column: &str, expr: &str) -> Result<Filter, ApiError> {
    let (negated, rest) = match expr.strip_prefix("not.") {
        Some(r) => (true, r),
        None => (false, expr),
    };
    let Some((op_text, value)) = rest.split_once('.') else {
        return Err(filter_error(
            expr,
            "expected <operator>.<value>, e.g. eq.5 or is.null",
        ));
    };
    let op = Op::parse(op_text).ok_or_else(|| {
        filter_error(
            expr,
            &format!("unknown operator {op_text:?}; supported: eq, neq, gt, gte, lt, lte, like, ilike, is, in"),
        )
    })?;
    let operand = operand_for(&op, value, expr)?;
    let f = Filter::Cond {
        column: column.to_string(),
        op,
        operand,
    };
    Ok(if negated { Filter::Not(Box::new(f)) } else { f })
}

fn operand_for(op: &Op, value: &str, expr: &str) -> Result<Operand, ApiError> {
    match op {
        Op::Is => match value.to_ascii_lowercase().as_str() {
            "null" => Ok(Operand::Is(IsValue::Null)),
            "true" => Ok(Operand::Is(IsValue::True)),
            "false" => Ok(Operand::Is(IsValue::False)),
            "unknown" => Ok(Operand::Is(IsValue::Unknown)),
            _ => Err(filter_error(expr, "is. takes null, true, false or unknown")),
        },
        Op::In => {
            let inner = value
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or_else(|| filter_error(expr, "in. takes a parenthesized list: in.(a,b)"))?;
            Ok(Operand::List(parse_list(inner)))
        }
        _ => Ok(Operand::Value(value.to_string())),
    }
}

/// Items of an `in` list: bare words, or double-quoted with `\"`, `\\`.
fn parse_list(inner: &str) -> Vec<Option<String>> {
    if inner.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        let mut was_quoted = false;
        if chars.peek() == Some(&'"') {
            was_quoted = true;
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            item.push(n)
                        }
                    }
                    '"' => break,
                    c => item.push(c),
                }
            }
            // Skip anything up to the separator.
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                item.push(c);
                chars.next();
            }
        }
        if !was_quoted && item == "null" {
            out.push(None);
        } else {
            out.push(Some(item));
        }
        if chars.next().is_none() {
            break;
        }
    }
    out
}

/// Deepest `or(…)`/`and(…)` nesting accepted. The parser recurses once per
/// level, so unbounded nesting from a query string would overflow the
/// stack and abort the whole hub.
pub const MAX_LOGIC_DEPTH: usize = 64;

/// Recursive-descent parser for `or=(…)` / `and=(…)` trees.
struct LogicParser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> LogicParser<'a> {
    fn new(src: &'a str) -> Self {
        LogicParser {
            src,
            pos: 0,
            depth: 0,
        }
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn error(&self, why: &str) -> ApiError {
        ApiError::parse(
            format!(
                "\"failed to parse logic tree ({})\" (line 1, column {})",
                self.src,
                self.pos + 1
            ),
            why.to_string(),
        )
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn expect_end(&self) -> Result<(), ApiError> {
        if self.pos == self.src.len() {
            Ok(())
        } else {
            Err(self.error("unexpected text after the closing ')'"))
        }
    }

    fn logic(&mut self) -> Result<Vec<Filter>, ApiError> {
        if self.depth >= MAX_LOGIC_DEPTH {
            return Err(self.error(&format!(
                "logic trees may nest at most {MAX_LOGIC_DEPTH} levels deep"
            )));
        }
        self.depth += 1;
        let items = self.logic_items();
        self.depth -= 1;
        items
    }

    fn logic_items(&mut self) -> Result<Vec<Filter>, ApiError> {
        if !self.eat("(") {
            return Err(self.error("a logic tree starts with '('"));
        }
        let mut items = Vec::new();
        loop {
            items.push(self.item()?);
            if self.eat(",") {
                continue;
            }
            if self.eat(")") {
                return Ok(items);
            }
            return Err(self.error("expected ',' or ')'"));
        }
    }

    fn item(&mut self) -> Result<Filter, ApiError> {
        let negated = self.eat("not.");
        for (word, is_or) in [("or(", true), ("and(", false)] {
            if self.rest().starts_with(word) {
                self.pos += word.len() - 1;
                let items = self.logic()?;
                let f = if is_or {
                    Filter::Or(items)
                } else {
                    Filter::And(items)
                };
                return Ok(if negated { Filter::Not(Box::new(f)) } else { f });
            }
        }
        // column.[not.]op.value
        let rest = self.rest();
        let Some(dot) = rest.find('.') else {
            return Err(self.error("expected <column>.<operator>.<value>"));
        };
        let column = rest[..dot].to_string();
        if column.is_empty() || column.contains([',', '(', ')']) {
            return Err(self.error("expected a column name"));
        }
        self.pos += dot + 1;
        let cond_negated = self.eat("not.");
        let rest = self.rest();
        let Some(dot) = rest.find('.') else {
            return Err(self.error("expected <operator>.<value> after the column"));
        };
        let op_text = &rest[..dot];
        let op = Op::parse(op_text)
            .ok_or_else(|| self.error(&format!("unknown operator {op_text:?}")))?;
        self.pos += dot + 1;
        let value = self.value(matches!(op, Op::In))?;
        let operand = operand_for(&op, &value, &value)?;
        let mut f = Filter::Cond {
            column,
            op,
            operand,
        };
        if cond_negated {
            f = Filter::Not(Box::new(f));
        }
        Ok(if negated { Filter::Not(Box::new(f)) } else { f })
    }

    /// A value ends at the next ',' or ')' at depth 0; it may be quoted. An
    /// `in` list keeps its parentheses.
    fn value(&mut self, list: bool) -> Result<String, ApiError> {
        let rest = self.rest();
        if list {
            // The list ends at the first ')' outside a quoted item: a quoted
            // item may itself contain ')' (`in.("a)b",c)`).
            let (mut quoted, mut escaped) = (false, false);
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    if escaped {
                        escaped = false;
                        return false;
                    }
                    match c {
                        '\\' if quoted => escaped = true,
                        '"' => quoted = !quoted,
                        ')' if !quoted => return true,
                        _ => {}
                    }
                    false
                })
                .map(|(i, _)| i)
                .ok_or_else(|| self.error("unterminated in.(…) list"))?;
            self.pos += end + 1;
            return Ok(rest[..=end].to_string());
        }
        if let Some(body) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = body.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n)
                        }
                    }
                    '"' => {
                        self.pos += 1 + i + 1;
                        return Ok(out);
                    }
                    c => out.push(c),
                }
            }
            return Err(self.error("unterminated quoted value"));
        }
        let end = rest.find([',', ')']).unwrap_or(rest.len());
        self.pos += end;
        Ok(rest[..end].to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(column: &str, op: Op, operand: Operand) -> Filter {
        Filter::Cond {
            column: column.into(),
            op,
            operand,
        }
    }

    #[test]
    fn decodes_supabase_js_encoding() {
        let q = parse_query("select=id%2Ctitle%2C%22my+col%22&status=eq.open+task&id=in.%281%2C2%2C%22a%2Cb%22%29&or=%28status.eq.open%2Cpriority.gt.3%29&order=created_at.desc.nullsfirst%2Cid.asc&limit=10").unwrap();
        assert_eq!(
            q.select,
            Some(vec!["id".into(), "title".into(), "my col".into()])
        );
        assert_eq!(
            q.filters[0],
            cond("status", Op::Eq, Operand::Value("open task".into()))
        );
        assert_eq!(
            q.filters[1],
            cond(
                "id",
                Op::In,
                Operand::List(vec![Some("1".into()), Some("2".into()), Some("a,b".into())])
            )
        );
        assert_eq!(
            q.filters[2],
            Filter::Or(vec![
                cond("status", Op::Eq, Operand::Value("open".into())),
                cond("priority", Op::Gt, Operand::Value("3".into())),
            ])
        );
        assert_eq!(q.order.len(), 2);
        assert!(q.order[0].descending && q.order[0].nulls_first == Some(true));
        assert!(!q.order[1].descending && !q.order[1].effective_nulls_first());
        assert_eq!(q.limit, Some(10));
    }

    #[test]
    fn values_keep_their_dots_and_spaces_may_be_percent_encoded() {
        let q = parse_query("name=eq.a.b&x=neq.hello%20world").unwrap();
        assert_eq!(
            q.filters[0],
            cond("name", Op::Eq, Operand::Value("a.b".into()))
        );
        assert_eq!(
            q.filters[1],
            cond("x", Op::Neq, Operand::Value("hello world".into()))
        );
    }

    #[test]
    fn not_prefix_and_is() {
        let q = parse_query("age=not.gt.5&gateway_id=is.NULL&flag=is.true").unwrap();
        assert_eq!(
            q.filters[0],
            Filter::Not(Box::new(cond("age", Op::Gt, Operand::Value("5".into()))))
        );
        assert_eq!(
            q.filters[1],
            cond("gateway_id", Op::Is, Operand::Is(IsValue::Null))
        );
        assert_eq!(
            q.filters[2],
            cond("flag", Op::Is, Operand::Is(IsValue::True))
        );
    }

    #[test]
    fn nested_logic_trees() {
        let q = parse_query(
            "or=(status.eq.open,and(priority.gte.3,owner_id.is.null),name.not.eq.\"a,b\")",
        )
        .unwrap();
        assert_eq!(
            q.filters[0],
            Filter::Or(vec![
                cond("status", Op::Eq, Operand::Value("open".into())),
                Filter::And(vec![
                    cond("priority", Op::Gte, Operand::Value("3".into())),
                    cond("owner_id", Op::Is, Operand::Is(IsValue::Null)),
                ]),
                Filter::Not(Box::new(cond("name", Op::Eq, Operand::Value("a,b".into())))),
            ])
        );
        let q = parse_query("not.and=(a.eq.1,b.in.(2,3))").unwrap();
        assert_eq!(
            q.filters[0],
            Filter::Not(Box::new(Filter::And(vec![
                cond("a", Op::Eq, Operand::Value("1".into())),
                cond(
                    "b",
                    Op::In,
                    Operand::List(vec![Some("2".into()), Some("3".into())])
                ),
            ])))
        );
    }

    #[test]
    fn in_lists_handle_quotes_escapes_and_null() {
        assert_eq!(
            parse_list(r#"a,"b\"c",null,"null""#),
            vec![
                Some("a".into()),
                Some("b\"c".into()),
                None,
                Some("null".into())
            ]
        );
        assert!(parse_list("").is_empty());
    }

    #[test]
    fn malformed_input_is_a_pgrst100() {
        for bad in [
            "status=eqopen",
            "status=foo.bar",
            "or=(status.eq.open",
            "or=status.eq.open",
            "or=(status)",
            "or=(a.eq.1)x",
            "id=in.1,2",
            "x=is.maybe",
            "limit=-1",
            "order=id.sideways",
            "select=id,rel(col)",
            "=eq.1",
        ] {
            let err = parse_query(bad).expect_err(bad);
            assert_eq!(err.code, "PGRST100", "{bad}");
            assert_eq!(err.status, 400, "{bad}");
            assert!(err.details.is_some(), "{bad}");
        }
    }

    #[test]
    fn star_and_reserved_keys() {
        let q = parse_query("select=*&on_conflict=id&columns=%22a%22%2C%22b%22&offset=5").unwrap();
        assert_eq!(q.select, None);
        assert_eq!(q.on_conflict, Some(vec!["id".into()]));
        assert_eq!(q.columns, Some(vec!["a".into(), "b".into()]));
        assert_eq!(q.offset, Some(5));
    }

    /// Regression (prop_parsers): inside a logic tree an `in` list ended at
    /// the first ')', even one inside a quoted item.
    #[test]
    fn quoted_parenthesis_inside_an_in_list_of_a_logic_tree() {
        let q = parse_query("or=(a.in.(\")\",\"x\\\"y)\",b),c.eq.1)").unwrap();
        assert_eq!(
            q.filters[0],
            Filter::Or(vec![
                cond(
                    "a",
                    Op::In,
                    Operand::List(vec![
                        Some(")".into()),
                        Some("x\"y)".into()),
                        Some("b".into())
                    ])
                ),
                cond("c", Op::Eq, Operand::Value("1".into())),
            ])
        );
        assert_eq!(
            parse_query("or=(a.in.(\"x)")
                .unwrap_err()
                .details
                .as_deref(),
            Some("unterminated in.(…) list")
        );
    }

    /// Regression (prop_parsers): deeply nested logic trees recursed without
    /// bound; a long enough query string overflowed the stack (abort).
    #[test]
    fn logic_tree_depth_is_bounded() {
        let nested = |depth: usize| {
            format!(
                "or=({}a.eq.1{})",
                "and(".repeat(depth - 1),
                ")".repeat(depth - 1)
            )
        };
        assert!(parse_query(&nested(MAX_LOGIC_DEPTH)).is_ok());
        let err = parse_query(&nested(MAX_LOGIC_DEPTH + 1)).unwrap_err();
        assert_eq!(err.code, "PGRST100");
        assert!(err.details.unwrap().contains("nest at most"));
        // Far deeper than any stack allows: still just an error.
        assert!(parse_query(&nested(1_000_000)).is_err());
    }
}
