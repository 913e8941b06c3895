-- Version 3: people (issue 13): accounts, sessions, membership, invitations.
CREATE TABLE user_accounts (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  id               TEXT PRIMARY KEY,
  email            TEXT NOT NULL UNIQUE,
  password_hash    TEXT NOT NULL,
  user_metadata    TEXT NOT NULL DEFAULT '{}',
  created_at       TEXT NOT NULL,
  updated_at       TEXT NOT NULL,
  last_sign_in_at  TEXT
);
CREATE TABLE user_sessions (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  id          TEXT PRIMARY KEY,
  user_id     TEXT NOT NULL REFERENCES user_accounts(id) ON DELETE CASCADE,
  created_at  TEXT NOT NULL,
  revoked_at  TEXT
);
CREATE INDEX user_sessions_user_idx ON user_sessions (user_id);
CREATE TABLE user_refresh_tokens (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  token_hash  TEXT PRIMARY KEY,
  session_id  TEXT NOT NULL REFERENCES user_sessions(id) ON DELETE CASCADE,
  parent_hash TEXT,
  created_at  TEXT NOT NULL,
  revoked_at  TEXT
);
CREATE INDEX user_refresh_tokens_session_idx ON user_refresh_tokens (session_id);
CREATE TABLE team_members (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  id          TEXT PRIMARY KEY,
  team_id     TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  user_id     TEXT NOT NULL REFERENCES user_accounts(id) ON DELETE CASCADE,
  email       TEXT NOT NULL DEFAULT '',
  role        TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner','admin','member','viewer')),
  created_at  TEXT NOT NULL,
  updated_at  TEXT NOT NULL,
  CONSTRAINT team_members_team_user_uniq UNIQUE (team_id, user_id)
);
CREATE INDEX team_members_user_idx ON team_members (user_id, team_id);
CREATE TABLE team_invitations (
  _rowid  BIGINT GENERATED ALWAYS AS IDENTITY,
  id           TEXT PRIMARY KEY,
  team_id      TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
  email        TEXT NOT NULL,
  role         TEXT NOT NULL CHECK (role IN ('owner','admin','member','viewer')),
  code_hash    TEXT NOT NULL UNIQUE,
  created_by   TEXT,
  created_at   TEXT NOT NULL,
  expires_at   TEXT NOT NULL,
  accepted_at  TEXT,
  accepted_by  TEXT
);
