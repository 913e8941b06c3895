//! Compiles the PostgREST filter AST to a SQL `WHERE` clause with bound
//! parameters. Column names are checked against the schema (42703) and
//! values cast to the column type (22P02) before any SQL is built, so no
//! request text ever reaches SQL unescaped.

use super::error::Refusal;
use crate::postgrest::{Filter, IsValue, Op, Operand, Order};
use crate::schema::{ColType, Column, Table};
use crate::values::{cast_text, SqlValue};

/// How a backend spells what differs between SQL dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }
}

/// Collects bound parameters while SQL is being written.
pub struct Params {
    pub dialect: Dialect,
    pub values: Vec<SqlValue>,
}

impl Params {
    pub fn new(dialect: Dialect) -> Self {
        Params {
            dialect,
            values: Vec::new(),
        }
    }

    pub fn push(&mut self, v: SqlValue) -> String {
        self.values.push(v);
        self.dialect.placeholder(self.values.len())
    }
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A column a request may read, filter or order by: 42703 when there is
/// none, 42501 for a write-only column (a filter on a secret would be an
/// oracle for its value).
pub fn readable_column(table: &Table, name: &str) -> Result<&'static Column, Refusal> {
    let col = table
        .column(name)
        .ok_or_else(|| Refusal::unknown_column(table.name, name))?;
    if col.write_only {
        return Err(Refusal::new(
            "42501",
            format!(
                "permission denied for column {name} of table {}",
                table.name
            ),
        )
        .hint("This column is write-only: it can be set but never read, filtered or ordered by."));
    }
    Ok(col)
}

/// `WHERE …` for an AND of filters (`TRUE` when empty).
pub fn where_clause(table: &Table, filters: &[Filter], p: &mut Params) -> Result<String, Refusal> {
    if filters.is_empty() {
        return Ok("1=1".into());
    }
    let parts = filters
        .iter()
        .map(|f| compile(table, f, p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(parts.join(" AND "))
}

fn compile(table: &Table, f: &Filter, p: &mut Params) -> Result<String, Refusal> {
    match f {
        Filter::And(items) | Filter::Or(items) => {
            if items.is_empty() {
                return Ok("1=1".into());
            }
            let joiner = if matches!(f, Filter::And(_)) {
                " AND "
            } else {
                " OR "
            };
            let parts = items
                .iter()
                .map(|i| compile(table, i, p))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(format!("({})", parts.join(joiner)))
        }
        Filter::Not(inner) => Ok(format!("NOT ({})", compile(table, inner, p)?)),
        Filter::False => Ok("1=0".into()),
        Filter::SubagentOfGateway(gateway_id) => {
            let ph = p.push(SqlValue::Text(gateway_id.clone()));
            Ok(format!(
                "\"subagent_id\" IN (SELECT \"id\" FROM \"subagents\" WHERE \"gateway_id\" = {ph})"
            ))
        }
        Filter::TeamOfMember {
            column,
            user_id,
            session_id,
            roles,
        } => {
            let user = p.push(SqlValue::Text(user_id.clone()));
            let session = p.push(SqlValue::Text(session_id.clone()));
            let roles = roles
                .iter()
                .map(|r| p.push(SqlValue::Text(r.to_string())))
                .collect::<Vec<_>>()
                .join(", ");
            Ok(format!(
                "{} IN (SELECT m.\"team_id\" FROM \"team_members\" m JOIN \"user_sessions\" s ON s.\"user_id\" = m.\"user_id\" \
                 WHERE m.\"user_id\" = {user} AND s.\"id\" = {session} AND s.\"revoked_at\" IS NULL AND m.\"role\" IN ({roles}))",
                quote_ident(column)
            ))
        }
        Filter::Cond {
            column,
            op,
            operand,
        } => {
            let col = readable_column(table, column)?;
            let ident = quote_ident(col.name);
            match (op, operand) {
                (Op::Is, Operand::Is(v)) => Ok(match v {
                    IsValue::Null | IsValue::Unknown => format!("{ident} IS NULL"),
                    IsValue::True => format!("{ident} IS TRUE"),
                    IsValue::False => format!("{ident} IS FALSE"),
                }),
                (Op::In, Operand::List(items)) => {
                    let mut phs = Vec::new();
                    let mut has_null = false;
                    for item in items {
                        match item {
                            Some(s) => phs.push(p.push(cast_text(col, s)?)),
                            None => has_null = true,
                        }
                    }
                    let mut sql = if phs.is_empty() {
                        "1=0".to_string()
                    } else {
                        format!("{ident} IN ({})", phs.join(", "))
                    };
                    if has_null {
                        sql = format!("({sql} OR {ident} IS NULL)");
                    }
                    Ok(sql)
                }
                (Op::Like | Op::Ilike, Operand::Value(pattern)) => {
                    // PostgREST accepts `*` as the wildcard, so URLs need no `%`.
                    let pattern = pattern.replace('*', "%");
                    let ph = p.push(SqlValue::Text(pattern));
                    let target = if col.ty == ColType::Text {
                        ident
                    } else {
                        format!("CAST({ident} AS TEXT)")
                    };
                    Ok(match (op, p.dialect) {
                        (Op::Like, _) => format!("{target} LIKE {ph}"),
                        (_, Dialect::Postgres) => format!("{target} ILIKE {ph}"),
                        (_, Dialect::Sqlite) => format!("lower({target}) LIKE lower({ph})"),
                    })
                }
                (op, Operand::Value(v)) => {
                    let sym = match op {
                        Op::Eq => "=",
                        Op::Neq => "<>",
                        Op::Gt => ">",
                        Op::Gte => ">=",
                        Op::Lt => "<",
                        Op::Lte => "<=",
                        _ => return Err(mismatch(column)),
                    };
                    let ph = p.push(cast_text(col, v)?);
                    Ok(format!("{ident} {sym} {ph}"))
                }
                _ => Err(mismatch(column)),
            }
        }
    }
}

fn mismatch(column: &str) -> Refusal {
    Refusal::parse(
        format!("\"failed to parse filter on {column}\" (line 1, column 1)"),
        "operator and value do not fit together",
    )
}

/// `ORDER BY …` (empty when no order), with PostgreSQL's NULL placement
/// written out so that both backends sort alike.
pub fn order_clause(table: &Table, order: &[Order]) -> Result<String, Refusal> {
    if order.is_empty() {
        return Ok(String::new());
    }
    let parts = order
        .iter()
        .map(|o| {
            let col = readable_column(table, &o.column)?;
            Ok(format!(
                "{} {} NULLS {}",
                quote_ident(col.name),
                if o.descending { "DESC" } else { "ASC" },
                if o.effective_nulls_first() {
                    "FIRST"
                } else {
                    "LAST"
                }
            ))
        })
        .collect::<Result<Vec<_>, Refusal>>()?;
    Ok(format!(" ORDER BY {}", parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use crate::postgrest::parse_query;
    use crate::schema::GATEWAY_JOBS;

    fn compile_q(q: &str) -> Result<(String, Vec<SqlValue>), ApiError> {
        let q = parse_query(q)?;
        let mut p = Params::new(Dialect::Sqlite);
        let w = where_clause(&GATEWAY_JOBS, &q.filters, &mut p)?;
        Ok((w, p.values))
    }

    #[test]
    fn compiles_with_bound_parameters() {
        let (w, v) = compile_q("status=eq.queued&or=(gateway_id.is.null,attempt.gt.2)").unwrap();
        assert_eq!(
            w,
            "\"status\" = ?1 AND (\"gateway_id\" IS NULL OR \"attempt\" > ?2)"
        );
        assert_eq!(v, vec![SqlValue::Text("queued".into()), SqlValue::Int(2)]);
    }

    #[test]
    fn unknown_columns_and_bad_values_are_refused() {
        assert_eq!(compile_q("nope=eq.1").unwrap_err().code, "42703");
        assert_eq!(
            compile_q("nope=eq.1").unwrap_err().message,
            "column gateway_jobs.nope does not exist"
        );
        assert_eq!(compile_q("id=eq.x").unwrap_err().code, "22P02");
        assert_eq!(compile_q("attempt=in.(1,x)").unwrap_err().code, "22P02");
    }

    #[test]
    fn in_with_null_and_like_star() {
        let (w, _) = compile_q("gateway_id=in.(null)").unwrap();
        assert_eq!(w, "(1=0 OR \"gateway_id\" IS NULL)");
        let (w, v) = compile_q("job_type=ilike.*RUN").unwrap();
        assert_eq!(w, "lower(\"job_type\") LIKE lower(?1)");
        assert_eq!(v, vec![SqlValue::Text("%RUN".into())]);
    }

    #[test]
    fn order_spells_out_null_placement() {
        let q = parse_query("order=created_at.desc,attempt.asc.nullsfirst").unwrap();
        assert_eq!(
            order_clause(&GATEWAY_JOBS, &q.order).unwrap(),
            " ORDER BY \"created_at\" DESC NULLS FIRST, \"attempt\" ASC NULLS FIRST"
        );
    }
}
