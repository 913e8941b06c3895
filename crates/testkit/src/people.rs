//! People fixtures: users, invitations, sessions and memberships, made
//! through the hub's public auth API and RPCs like any client would.

use crate::Hub;
use reqwest::Method;
use serde_json::{json, Value};

/// A signed-in person.
#[derive(Debug, Clone)]
pub struct UserSession {
    pub user_id: String,
    pub email: String,
    pub access_token: String,
    pub refresh_token: String,
}

impl Hub {
    /// Creates a confirmed user through the admin API (service key).
    pub fn create_user(&self, email: &str, password: &str) -> String {
        let res = self
            .req(Method::POST, "/auth/v1/admin/users", &self.service_key)
            .header("apikey", &self.service_key)
            .json(&json!({"email": email, "password": password, "email_confirm": true}))
            .send()
            .expect("admin create user");
        let status = res.status();
        let body: Value = res.json().expect("user JSON");
        assert!(status.is_success(), "create user {email}: {status} {body}");
        body["id"].as_str().expect("user id").to_string()
    }

    /// Signs in with the password grant; the raw response.
    pub fn try_sign_in(&self, email: &str, password: &str) -> (u16, Value) {
        let res = self
            .req(
                Method::POST,
                "/auth/v1/token?grant_type=password",
                &self.anon_key,
            )
            .json(&json!({"email": email, "password": password}))
            .send()
            .expect("sign-in request");
        let status = res.status().as_u16();
        (status, res.json().unwrap_or(Value::Null))
    }

    pub fn sign_in(&self, email: &str, password: &str) -> UserSession {
        let (status, body) = self.try_sign_in(email, password);
        assert_eq!(status, 200, "sign in {email}: {body}");
        UserSession {
            user_id: body["user"]["id"].as_str().unwrap().into(),
            email: email.into(),
            access_token: body["access_token"].as_str().unwrap().into(),
            refresh_token: body["refresh_token"].as_str().unwrap().into(),
        }
    }

    /// An invitation code for `email` to join `team_id` as `role`, made
    /// with the service key.
    pub fn invite(&self, team_id: &str, email: &str, role: &str) -> String {
        let (status, body) = self.rpc(
            &self.service_key,
            "create_team_invitation",
            json!({"p_team_id": team_id, "p_email": email, "p_role": role}),
        );
        assert_eq!(status, 200, "invite {email}: {body}");
        body["code"].as_str().expect("code").to_string()
    }

    /// Calls an RPC with `token` as the bearer; (status, body).
    pub fn rpc(&self, token: &str, name: &str, args: Value) -> (u16, Value) {
        let res = self
            .req(Method::POST, &format!("/rest/v1/rpc/{name}"), token)
            .json(&args)
            .send()
            .expect("rpc request");
        let status = res.status().as_u16();
        (status, res.json().unwrap_or(Value::Null))
    }

    /// A new user, signed in, who accepted an invitation to `team_id` as
    /// `role`.
    pub fn member(&self, team_id: &str, role: &str) -> UserSession {
        let email = format!("{}@example.test", &crate::uuid_like()[..12]);
        let password = "correct horse battery";
        self.create_user(&email, password);
        let code = self.invite(team_id, &email, role);
        let session = self.sign_in(&email, password);
        let (status, body) = self.rpc(
            &session.access_token,
            "accept_team_invitation",
            json!({"p_code": code}),
        );
        assert_eq!(status, 200, "accept invitation: {body}");
        session
    }
}
