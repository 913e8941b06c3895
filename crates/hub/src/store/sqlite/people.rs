//! People, their sessions, team membership and invitations on SQLite.

use super::{change, map_err, rotate_in_family, select_by_pks, SqliteStore, TokenFamily};
use crate::changes::{ChangeKind, Row, RowChange};
use crate::error::ApiError;
use crate::people::Role;
use crate::schema;
use crate::store::{
    LogoutScope, NewInvitation, PeopleError, PeopleStore, RefreshError, UserRecord,
};
use crate::values::{now_timestamp, parse_timestamp};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction};
use serde_json::Value;

const USER_TOKENS: TokenFamily = TokenFamily {
    tokens: "user_refresh_tokens",
    sessions: "user_sessions",
};

const USER_COLUMNS: &str =
    "id, email, password_hash, user_metadata, created_at, updated_at, last_sign_in_at";

fn read_user(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    let metadata: String = r.get(3)?;
    Ok(UserRecord {
        id: r.get(0)?,
        email: r.get(1)?,
        password_hash: r.get(2)?,
        user_metadata: serde_json::from_str(&metadata)
            .unwrap_or_else(|_| Value::Object(Default::default())),
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
        last_sign_in_at: r.get(6)?,
    })
}

fn user_where(
    tx: &Transaction<'_>,
    clause: &str,
    arg: &str,
) -> Result<Option<UserRecord>, ApiError> {
    tx.query_row(
        &format!("SELECT {USER_COLUMNS} FROM user_accounts WHERE {clause}"),
        [arg],
        read_user,
    )
    .optional()
    .map_err(|e| map_err(e, "user_accounts"))
}

/// A write of `user_accounts`: a duplicate email is the domain's
/// `EmailTaken`, anything else a storage error.
fn email_write_error(e: rusqlite::Error) -> PeopleError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == 2067 || f.extended_code == 1555 =>
        {
            PeopleError::EmailTaken
        }
        _ => map_err(e, "user_accounts").into(),
    }
}

/// Redeems an invitation inside `tx`: it must exist, be unused, unexpired
/// and addressed to `email`. Adds (or re-roles) the membership.
fn redeem(
    tx: &Transaction<'_>,
    changes: &mut Vec<RowChange>,
    code_hash: &str,
    user_id: &str,
    email: &str,
) -> Result<Row, PeopleError> {
    let found: Option<(String, String, String, String, Option<String>)> = tx
        .query_row(
            "SELECT id, team_id, email, role, accepted_at FROM team_invitations WHERE code_hash = ?1 AND expires_at > ?2",
            rusqlite::params![code_hash, now_timestamp()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()
        .map_err(|e| map_err(e, "team_invitations"))?;
    let Some((inv_id, team_id, inv_email, role, None)) = found else {
        return Err(PeopleError::InvalidInvitation);
    };
    if inv_email != email {
        return Err(PeopleError::InvalidInvitation);
    }
    let now = now_timestamp();
    tx.execute(
        "UPDATE team_invitations SET accepted_at = ?1, accepted_by = ?2 WHERE id = ?3",
        rusqlite::params![now, user_id, inv_id],
    )
    .map_err(|e| map_err(e, "team_invitations"))?;
    let existing: Option<String> = tx
        .query_row(
            "SELECT id FROM team_members WHERE team_id = ?1 AND user_id = ?2",
            [&team_id, user_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| map_err(e, "team_members"))?;
    let table = &schema::TEAM_MEMBERS;
    let row = match existing {
        Some(id) => {
            let old = select_by_pks(tx, table, std::slice::from_ref(&id))?.remove(0);
            tx.execute(
                "UPDATE team_members SET role = ?1, updated_at = ?2 WHERE id = ?3",
                rusqlite::params![role, now, id],
            )
            .map_err(|e| map_err(e, table.name))?;
            let new = select_by_pks(tx, table, std::slice::from_ref(&id))?.remove(0);
            changes.push(change(table, ChangeKind::Update, new.clone(), Some(old)));
            new
        }
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            tx.execute(
                "INSERT INTO team_members (id, team_id, user_id, email, role, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                rusqlite::params![id, team_id, user_id, email, role, now],
            )
            .map_err(|e| map_err(e, table.name))?;
            let new = select_by_pks(tx, table, std::slice::from_ref(&id))?.remove(0);
            changes.push(change(table, ChangeKind::Insert, new.clone(), None));
            new
        }
    };
    Ok(row)
}

/// Runs a people transaction: any error, domain or storage, rolls it back
/// (the domain error is carried past the store's `ApiError`-typed `tx`).
async fn people_tx<T, F>(store: &SqliteStore, f: F) -> Result<T, PeopleError>
where
    T: Send + 'static,
    F: FnOnce(&Transaction<'_>, &mut Vec<RowChange>) -> Result<T, PeopleError> + Send + 'static,
{
    let domain = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = domain.clone();
    let out = store
        .tx(move |tx, changes| match f(tx, changes) {
            Ok(v) => Ok(v),
            Err(PeopleError::Storage(e)) => Err(e),
            Err(other) => {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(other);
                Err(ApiError::internal("people transaction rolled back"))
            }
        })
        .await;
    match out {
        Ok(v) => Ok(v),
        Err(e) => match domain.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(domain_error) => Err(domain_error),
            None => Err(PeopleError::Storage(e)),
        },
    }
}

#[async_trait]
impl PeopleStore for SqliteStore {
    async fn create_user(
        &self,
        email: &str,
        password_hash: &str,
        user_metadata: &Value,
        invitation_hash: Option<&str>,
    ) -> Result<UserRecord, PeopleError> {
        let (email, password_hash) = (email.to_string(), password_hash.to_string());
        let metadata = user_metadata.to_string();
        let invitation_hash = invitation_hash.map(str::to_string);
        people_tx(self, move |tx, changes| {
            let id = uuid::Uuid::new_v4().to_string();
            let now = now_timestamp();
            tx.execute(
                "INSERT INTO user_accounts (id, email, password_hash, user_metadata, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                rusqlite::params![id, email, password_hash, metadata, now],
            )
            .map_err(email_write_error)?;
            if let Some(h) = &invitation_hash {
                redeem(tx, changes, h, &id, &email)?;
            }
            user_where(tx, "id = ?1", &id)?.ok_or(PeopleError::UserNotFound)
        })
        .await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, ApiError> {
        let email = email.to_string();
        self.tx(move |tx, _| user_where(tx, "email = ?1", &email))
            .await
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, ApiError> {
        let id = id.to_string();
        self.tx(move |tx, _| user_where(tx, "id = ?1", &id)).await
    }

    async fn update_user(
        &self,
        id: &str,
        email: Option<&str>,
        password_hash: Option<&str>,
        user_metadata: Option<&Value>,
    ) -> Result<UserRecord, PeopleError> {
        let id = id.to_string();
        let email = email.map(str::to_string);
        let password_hash = password_hash.map(str::to_string);
        let metadata = user_metadata.map(Value::to_string);
        people_tx(self, move |tx, _| {
            let now = now_timestamp();
            tx.execute(
                "UPDATE user_accounts SET email = COALESCE(?1, email), password_hash = COALESCE(?2, password_hash), \
                 user_metadata = COALESCE(?3, user_metadata), updated_at = ?4 WHERE id = ?5",
                rusqlite::params![email, password_hash, metadata, now, id],
            )
            .map_err(email_write_error)?;
            if let Some(email) = &email {
                tx.execute(
                    "UPDATE team_members SET email = ?1 WHERE user_id = ?2",
                    rusqlite::params![email, id],
                )
                .map_err(|e| map_err(e, "team_members"))?;
            }
            user_where(tx, "id = ?1", &id)?.ok_or(PeopleError::UserNotFound)
        })
        .await
    }

    async fn start_user_session(
        &self,
        user_id: &str,
        refresh_hash: &str,
    ) -> Result<String, ApiError> {
        let (user_id, refresh_hash) = (user_id.to_string(), refresh_hash.to_string());
        self.tx(move |tx, _| {
            let session_id = uuid::Uuid::new_v4().to_string();
            let now = now_timestamp();
            let map = |e| map_err(e, "user_sessions");
            tx.execute(
                "INSERT INTO user_sessions (id, user_id, created_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![session_id, user_id, now],
            )
            .map_err(map)?;
            tx.execute(
                "INSERT INTO user_refresh_tokens (token_hash, session_id, created_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![refresh_hash, session_id, now],
            )
            .map_err(map)?;
            tx.execute(
                "UPDATE user_accounts SET last_sign_in_at = ?1 WHERE id = ?2",
                rusqlite::params![now, user_id],
            )
            .map_err(map)?;
            Ok(session_id)
        })
        .await
    }

    async fn rotate_user_refresh_token(
        &self,
        old_hash: &str,
        new_hash: &str,
        reuse_interval_secs: i64,
    ) -> Result<(String, String), RefreshError> {
        let (old_hash, new_hash) = (old_hash.to_string(), new_hash.to_string());
        self.tx(move |tx, _| {
            rotate_in_family(
                tx,
                &USER_TOKENS,
                &old_hash,
                &new_hash,
                reuse_interval_secs,
                |tx, session_id| {
                    tx.query_row(
                        "SELECT user_id FROM user_sessions WHERE id = ?1 AND revoked_at IS NULL",
                        [session_id],
                        |r| r.get::<_, String>(0),
                    )
                    .optional()
                    .map(|u| u.map(|u| (u, session_id.to_string())))
                    .map_err(|e| map_err(e, "user_sessions"))
                },
            )
        })
        .await
        .unwrap_or(Err(RefreshError::SessionGone))
    }

    async fn user_session_active(&self, session_id: &str) -> Result<bool, ApiError> {
        let session_id = session_id.to_string();
        self.tx(move |tx, _| {
            tx.query_row(
                "SELECT COUNT(*) FROM user_sessions WHERE id = ?1 AND revoked_at IS NULL",
                [&session_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| map_err(e, "user_sessions"))
        })
        .await
    }

    async fn end_user_sessions(
        &self,
        user_id: &str,
        session_id: &str,
        scope: LogoutScope,
    ) -> Result<(), ApiError> {
        let (user_id, session_id) = (user_id.to_string(), session_id.to_string());
        self.tx(move |tx, _| {
            let which = match scope {
                LogoutScope::Local => "id = ?3",
                LogoutScope::Global => "?3 = ?3",
                LogoutScope::Others => "id <> ?3",
            };
            tx.execute(
                &format!(
                    "UPDATE user_sessions SET revoked_at = ?1 WHERE user_id = ?2 AND revoked_at IS NULL AND {which}"
                ),
                rusqlite::params![now_timestamp(), user_id, session_id],
            )
            .map(|_| ())
            .map_err(|e| map_err(e, "user_sessions"))
        })
        .await
    }

    async fn create_invitation(&self, inv: NewInvitation<'_>) -> Result<(), ApiError> {
        if parse_timestamp(inv.expires_at).is_none() {
            return Err(ApiError::pg(
                "22007",
                format!("invalid expiry {:?}", inv.expires_at),
            ));
        }
        let args = (
            inv.team_id.to_string(),
            inv.email.to_string(),
            inv.role.as_str(),
            inv.code_hash.to_string(),
            inv.expires_at.to_string(),
            inv.created_by.map(str::to_string),
        );
        self.tx(move |tx, _| {
            let (team_id, email, role, code_hash, expires_at, created_by) = args;
            tx.execute(
                "INSERT INTO team_invitations (id, team_id, email, role, code_hash, created_by, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                rusqlite::params![
                    uuid::Uuid::new_v4().to_string(),
                    team_id,
                    email,
                    role,
                    code_hash,
                    created_by,
                    now_timestamp(),
                    expires_at
                ],
            )
            .map(|_| ())
            .map_err(|e| map_err(e, "team_invitations"))
        })
        .await
    }

    async fn accept_invitation(&self, code_hash: &str, user_id: &str) -> Result<Row, PeopleError> {
        let (code_hash, user_id) = (code_hash.to_string(), user_id.to_string());
        people_tx(self, move |tx, changes| {
            let user = user_where(tx, "id = ?1", &user_id)?.ok_or(PeopleError::UserNotFound)?;
            redeem(tx, changes, &code_hash, &user_id, &user.email)
        })
        .await
    }

    async fn member_role(&self, team_id: &str, user_id: &str) -> Result<Option<Role>, ApiError> {
        let (team_id, user_id) = (team_id.to_string(), user_id.to_string());
        self.tx(move |tx, _| {
            tx.query_row(
                "SELECT role FROM team_members WHERE team_id = ?1 AND user_id = ?2",
                [&team_id, &user_id],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map(|r| r.as_deref().and_then(Role::parse))
            .map_err(|e| map_err(e, "team_members"))
        })
        .await
    }
}
