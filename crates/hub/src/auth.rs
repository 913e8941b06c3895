//! Principals, API keys and JWTs (control-plane spec §16.1).
//!
//! The hub signs every token with one HS256 secret, like a Supabase project:
//! the anon key and the service key are long-lived JWTs whose `role` claim is
//! `anon` / `service_role`; a paired gateway gets short-lived access tokens
//! with `role: authenticated` and `app_metadata.principal = "gateway"`.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Who is making a request, after its `apikey` and bearer were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The anon key alone: may only redeem pairing codes.
    Anon,
    /// The service key: the control plane itself; bypasses every policy.
    Service,
    /// A paired gateway, acting only on its own team's rows.
    Gateway {
        gateway_id: String,
        team_id: String,
        user_id: String,
        session_id: String,
    },
    /// A signed-in person, acting through their team memberships.
    User { user_id: String, session_id: String },
}

impl Principal {
    pub fn gateway_ids(&self) -> Option<(&str, &str)> {
        match self {
            Principal::Gateway {
                gateway_id,
                team_id,
                ..
            } => Some((gateway_id.as_str(), team_id.as_str())),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("No API key found in request")]
    MissingApiKey,
    #[error("Invalid API key")]
    InvalidApiKey,
    #[error("JWT expired")]
    Expired,
    #[error("invalid JWT: {0}")]
    Invalid(String),
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub app_metadata: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// The project's signing secret and its two API keys.
#[derive(Clone)]
pub struct Keys {
    secret: Vec<u8>,
    pub anon_key: String,
    pub service_key: String,
}

/// Ten years: API keys do not expire in practice, like Supabase's.
const API_KEY_LIFETIME_SECS: i64 = 10 * 365 * 24 * 3600;

impl Keys {
    /// Builds the key set from a secret, minting the two API keys.
    pub fn from_secret(secret: &[u8], issued_at: i64) -> Keys {
        let mint = |role: &str| {
            let claims = Claims {
                iss: Some("panorama-hub".into()),
                aud: None,
                role: role.into(),
                sub: None,
                exp: issued_at + API_KEY_LIFETIME_SECS,
                iat: issued_at,
                session_id: None,
                app_metadata: Value::Null,
                email: None,
            };
            sign(secret, &claims)
        };
        Keys {
            anon_key: mint("anon"),
            service_key: mint("service_role"),
            secret: secret.to_vec(),
        }
    }

    /// Keys built from previously stored values (the secret and both keys).
    pub fn from_parts(secret: Vec<u8>, anon_key: String, service_key: String) -> Keys {
        Keys {
            secret,
            anon_key,
            service_key,
        }
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    pub fn sign(&self, claims: &Claims) -> String {
        sign(&self.secret, claims)
    }

    /// Verifies a JWT's signature and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
        match decode::<Claims>(token, &DecodingKey::from_secret(&self.secret), &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(AuthError::Expired),
                _ => Err(AuthError::Invalid(e.to_string())),
            },
        }
    }

    /// Resolves a request's principal from its API key and bearer token, the
    /// way the Supabase gateway and PostgREST do: the API key must be one of
    /// the project's keys; a bearer equal to an API key means that key's
    /// role; any other bearer must be a valid user JWT.
    pub fn resolve(
        &self,
        apikey: Option<&str>,
        bearer: Option<&str>,
    ) -> Result<Principal, AuthError> {
        let apikey = apikey.ok_or(AuthError::MissingApiKey)?;
        if apikey != self.anon_key && apikey != self.service_key {
            return Err(AuthError::InvalidApiKey);
        }
        let token = bearer.unwrap_or(apikey);
        if token == self.service_key {
            return Ok(Principal::Service);
        }
        if token == self.anon_key {
            return Ok(Principal::Anon);
        }
        self.principal_of_token(token)
    }

    /// The principal a user JWT stands for.
    pub fn principal_of_token(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = self.verify(token)?;
        principal_of_claims(&claims)
    }

    /// Mints a gateway access token.
    pub fn mint_gateway_token(
        &self,
        user_id: &str,
        session_id: &str,
        gateway_id: &str,
        team_id: &str,
        now: i64,
        lifetime_secs: i64,
    ) -> String {
        self.mint_session_token(
            user_id,
            session_id,
            (now, lifetime_secs),
            gateway_app_metadata(gateway_id, team_id),
            None,
        )
    }

    /// An `authenticated` access token for one session, as GoTrue mints.
    fn mint_session_token(
        &self,
        sub: &str,
        session_id: &str,
        (now, lifetime_secs): (i64, i64),
        app_metadata: Value,
        email: Option<&str>,
    ) -> String {
        self.sign(&Claims {
            iss: Some("panorama-hub/auth/v1".into()),
            aud: Some("authenticated".into()),
            role: "authenticated".into(),
            sub: Some(sub.into()),
            exp: now + lifetime_secs,
            iat: now,
            session_id: Some(session_id.into()),
            app_metadata,
            email: email.map(str::to_string),
        })
    }

    /// Mints a person's access token, shaped like GoTrue's.
    pub fn mint_user_token(
        &self,
        user_id: &str,
        email: &str,
        session_id: &str,
        now: i64,
        lifetime_secs: i64,
    ) -> String {
        self.mint_session_token(
            user_id,
            session_id,
            (now, lifetime_secs),
            user_app_metadata(),
            Some(email),
        )
    }
}

pub fn user_app_metadata() -> Value {
    json!({"provider": "email", "providers": ["email"]})
}

pub fn gateway_app_metadata(gateway_id: &str, team_id: &str) -> Value {
    json!({"principal": "gateway", "gateway_id": gateway_id, "team_id": team_id, "provider": "gateway", "providers": ["gateway"]})
}

pub fn principal_of_claims(claims: &Claims) -> Result<Principal, AuthError> {
    match claims.role.as_str() {
        "service_role" => Ok(Principal::Service),
        "anon" => Ok(Principal::Anon),
        "authenticated" => {
            let md = &claims.app_metadata;
            let field = |k: &str| md.get(k).and_then(Value::as_str).map(str::to_string);
            if field("principal").as_deref() != Some("gateway") {
                return match (claims.sub.clone(), claims.session_id.clone()) {
                    (Some(user_id), Some(session_id)) => Ok(Principal::User {
                        user_id,
                        session_id,
                    }),
                    _ => Err(AuthError::Invalid(
                        "user token lacks its sub or session_id claim".into(),
                    )),
                };
            }
            match (field("gateway_id"), field("team_id"), claims.sub.clone()) {
                (Some(gateway_id), Some(team_id), Some(user_id)) => Ok(Principal::Gateway {
                    gateway_id,
                    team_id,
                    user_id,
                    session_id: claims.session_id.clone().unwrap_or_default(),
                }),
                _ => Err(AuthError::Invalid(
                    "gateway token lacks its identity claims".into(),
                )),
            }
        }
        other => Err(AuthError::Invalid(format!("unknown role {other:?}"))),
    }
}

fn sign(secret: &[u8], claims: &Claims) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing of plain claims cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::from_secret(b"0123456789abcdef0123456789abcdef", 1_700_000_000)
    }

    #[test]
    fn api_keys_resolve_to_their_roles() {
        let k = keys();
        assert_eq!(k.resolve(Some(&k.anon_key), None), Ok(Principal::Anon));
        assert_eq!(
            k.resolve(Some(&k.anon_key), Some(&k.service_key)),
            Ok(Principal::Service)
        );
        assert_eq!(k.resolve(None, None), Err(AuthError::MissingApiKey));
        assert_eq!(k.resolve(Some("nope"), None), Err(AuthError::InvalidApiKey));
    }

    #[test]
    fn gateway_tokens_round_trip_and_expire() {
        let k = keys();
        let now = chrono::Utc::now().timestamp();
        let t = k.mint_gateway_token("u1", "s1", "g1", "t1", now, 3600);
        match k.resolve(Some(&k.anon_key), Some(&t)).unwrap() {
            Principal::Gateway {
                gateway_id,
                team_id,
                ..
            } => {
                assert_eq!((gateway_id.as_str(), team_id.as_str()), ("g1", "t1"))
            }
            p => panic!("unexpected {p:?}"),
        }
        let old = k.mint_gateway_token("u1", "s1", "g1", "t1", now - 7200, 3600);
        assert_eq!(
            k.resolve(Some(&k.anon_key), Some(&old)),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn user_tokens_resolve_to_people_not_gateways() {
        let k = keys();
        let now = chrono::Utc::now().timestamp();
        let t = k.mint_user_token("u1", "a@b.c", "s1", now, 60);
        assert_eq!(
            k.resolve(Some(&k.anon_key), Some(&t)),
            Ok(Principal::User {
                user_id: "u1".into(),
                session_id: "s1".into()
            })
        );
        let old = k.mint_user_token("u1", "a@b.c", "s1", now - 120, 60);
        assert_eq!(
            k.resolve(Some(&k.anon_key), Some(&old)),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn forged_tokens_are_refused() {
        let k = keys();
        let other = Keys::from_secret(b"another secret of enough length!!", 1_700_000_000);
        let now = chrono::Utc::now().timestamp();
        let forged = other.mint_gateway_token("u1", "s1", "g1", "t1", now, 3600);
        assert!(matches!(
            k.resolve(Some(&k.anon_key), Some(&forged)),
            Err(AuthError::Invalid(_))
        ));
    }
}
